"""bench/gpu_kit.py, which carries TVM to a lent GPU machine: what goes into the kit, that kit and checkout
fit in one call, that a kit for another Python is refused, and that `run` keeps to its time budget."""

from __future__ import annotations

import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_kit  # noqa: E402  (bench/ is not a package)


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_kit_keeps_the_runtime_and_compiler_and_leaves_out_sources(tmp_path):
    tvm = _wheel(tmp_path / "tvm.whl", {"tvm/__init__.py": b"x = 1\n", "tvm/lib/libtvm_compiler.so": b"\x7fELF" * 9,
                                         "tvm/3rdparty/cutlass/a.h": b"//", "tvm/src/b.cc": b"//",
                                         "tvm/web/c.js": b"//", "tvm/relax/__pycache__/d.pyc": b"",
                                         "apache_tvm-1.dist-info/METADATA": b"Name: apache-tvm\n"})
    ffi = _wheel(tmp_path / "ffi.whl", {"tvm_ffi/lib/libtvm_ffi.so": b"\x7fELF", "tvm_ffi/3rdparty/e.txt": b"."})
    archive = tmp_path / "site.tar.xz"
    size = gpu_kit.pack_wheels([tvm, ffi], archive)
    assert size == archive.stat().st_size
    with tarfile.open(archive, "r:xz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"tvm/__init__.py", "tvm/lib/libtvm_compiler.so", "apache_tvm-1.dist-info/METADATA",
                                "tvm_ffi/lib/libtvm_ffi.so"}
        assert tar.extractfile("tvm/lib/libtvm_compiler.so").read() == b"\x7fELF" * 9
        assert members["tvm/lib/libtvm_compiler.so"].mode & 0o111 and not members["tvm/__init__.py"].mode & 0o111


def test_a_kit_over_the_carry_limit_is_refused_with_both_sizes():
    gpu_kit.check_fits(60 * 2**20, 4 * 2**20)
    with pytest.raises(gpu_kit.KitError, match=r"kit \(61.0 MiB\) and the checkout \(4.0 MiB\) are 65.0 MiB, over"):
        gpu_kit.check_fits(61 * 2**20, 4 * 2**20)


def test_checkout_leaves_room_for_the_kit():
    """The kit measured 60.8 MiB (2026-12-05): the checkout that travels with it must stay within the rest."""
    rest = gpu_kit.checkout_bytes()
    assert 0 < rest <= gpu_kit.CARRY_LIMIT - gpu_kit.KIT_BYTES, f"the checkout is {rest / 2**20:.1f} MiB"


def test_a_kit_for_another_python_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"python": "2.7", "archive": "site.tar.xz"}))
    with pytest.raises(gpu_kit.KitError, match=r"TVM for CPython 2.7, this is 3\.\d+: pack it with --python 3\.\d+"):
        gpu_kit.install(tmp_path / "site", tmp_path)


def test_run_keeps_to_its_budget(tmp_path):
    """With no budget left the first steps are logged as not run, and the run fails before the tests."""
    assert gpu_kit.run(tmp_path, budget_s=0, models="bert-base", workers=1) != 0
    logs = sorted(p.name for p in tmp_path.iterdir())
    assert logs == ["environment.log", "nvidia-smi.log"]
    assert all((tmp_path / name).read_text().startswith("not run: ") for name in logs)


def test_cuda_environment_finds_a_toolkit_off_the_paths(tmp_path, monkeypatch):
    """nvcc and libcudart.so.13 of a toolkit named by CUDA_HOME join PATH and LD_LIBRARY_PATH (TVM needs the
    latter to see a GPU at all); what the environment already has stays, after them."""
    monkeypatch.setattr(gpu_kit.importlib.util, "find_spec", lambda name: None)  # no `nvidia` wheels here
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib64").mkdir()
    (tmp_path / "bin/nvcc").write_text("#!/bin/sh\n")
    (tmp_path / "bin/nvcc").chmod(0o755)
    (tmp_path / "lib64/libcudart.so.13").write_bytes(b"")
    (tmp_path / "lib64/libcublas.so.13").write_bytes(b"")
    links = tmp_path / "links"
    env = gpu_kit.cuda_environment({"PATH": "/nonexistent", "CUDA_HOME": str(tmp_path), "LD_LIBRARY_PATH": "/x"},
                                   links)
    assert env["PATH"] == f"{tmp_path}/bin:/nonexistent"
    assert env["LD_LIBRARY_PATH"] == f"{links}:/x"
    # libcudart alone: the toolkit's cuBLAS stays off the path (PyTorch loads the one it was built with)
    assert [p.name for p in links.iterdir()] == ["libcudart.so.13"]
    assert (links / "libcudart.so.13").resolve() == (tmp_path / "lib64/libcudart.so.13").resolve()


def test_gpu_tests_name_existing_tests():
    root = Path(gpu_kit.ROOT)
    for test in gpu_kit.GPU_TESTS:
        path, _, name = test.partition("::")
        assert (root / path).is_file(), path
        assert not name or f"def {name}(" in (root / path).read_text(), test
