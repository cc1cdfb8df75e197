"""The x86 target names (ibert_tvm/targets.py): the fixed levels (`x86-amx`, `x86-avx512vnni`, `x86-avxvnni`,
`x86-avx2`) carry exactly their features, whatever CPU builds them; `llvm` follows what this CPU lists in
/proc/cpuinfo, not only LLVM's CPU model; `x86-noamx` has no AMX; a library built for a level runs here with
the same integers, and one this CPU cannot run is refused with the level it could be compiled for."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm

import ibert_tvm
from ibert_tvm import artifact, targets, tuning
from ibert_tvm.build_util import single_op_module
from ibert_tvm.relay_passes.pipeline import build
from test_x86_schedules import CASES, _asm
from tiny_models import calibration_texts, held_out_texts, save_tiny_classifier

HERE = targets.host_cpu_features()


def _runs_here(level: str):
    lacking = set(targets.resolve_target(level).features) - set(HERE)
    return pytest.mark.skipif(bool(lacking), reason=f"this CPU lacks {', '.join(sorted(lacking))}")


@pytest.mark.parametrize("name, features", [
    ("x86-amx", ("amx-int8", "avx512vnni", "avx512bw", "avx2")),
    ("x86-avx512vnni", ("avx512vnni", "avx512bw", "avx2")),
    ("x86-avxvnni", ("avxvnni", "avx2")),
    ("x86-avx2", ("avx2",)),
])
def test_levels_carry_exactly_their_features(name, features, monkeypatch):
    """A level does not depend on the building machine: with the CPU detection broken, it resolves the same."""
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: pytest.fail("a level read /proc/cpuinfo"))
    spec = targets.resolve_target(name)
    assert spec.family == "x86" and spec.features == features
    assert spec.target.attrs["mcpu"].startswith("x86-64-v")  # LLVM's vendor-neutral levels
    assert tuning.log_name(name) == name  # one shipped log per level, whichever machine tuned it


@pytest.mark.parametrize("cpu, flags, features", [
    # LLVM's model lacks what the CPU has (a VM reporting an older model): added
    ("skylake-avx512", {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"},
     ("avx512vnni", "avxvnni", "avx512bw", "avx2")),
    # LLVM's model has what the hypervisor hides: taken away, AVX-512 as a whole (no zmm code at all)
    ("icelake-server", {"avx2"}, ("avx2",)),
    # no /proc/cpuinfo (not Linux): LLVM's model as it is
    ("cascadelake", set(), ("avx512vnni", "avx512bw", "avx2")),
])
def test_host_target_follows_what_the_cpu_lists(cpu, flags, features, monkeypatch):
    monkeypatch.setattr(targets.codegen, "llvm_get_system_cpu", lambda: cpu)
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(targets, "amx_usable", lambda: False)
    for name in ("llvm", "x86-noamx"):
        spec = targets.resolve_target(name)
        assert spec.target.attrs["mcpu"] == cpu and spec.features == features
        assert tuning.log_name(name) == f"{name}-{cpu}"  # the host targets' logs are per CPU model
    if "avx512f" not in flags and flags:
        assert not tvm.target.codegen.llvm_cpu_has_features("avx512f", targets.resolve_target("llvm").target)


def test_noamx_takes_amx_away_from_a_cpu_model_that_has_it(monkeypatch):
    monkeypatch.setattr(targets.codegen, "llvm_get_system_cpu", lambda: "sapphirerapids")
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: frozenset())
    monkeypatch.setattr(targets, "amx_usable", lambda: True)
    assert "amx-int8" in targets.resolve_target("llvm").features
    assert targets.resolve_target("x86-noamx").features == ("avx512vnni", "avxvnni", "avx512bw", "avx2")


@pytest.mark.parametrize("features, levels", [
    (("amx-int8", "avx512vnni", "avxvnni", "avx512bw", "avx2"), ["x86-amx", "x86-avx512vnni", "x86-avxvnni", "x86-avx2"]),
    (("avx512vnni", "avx512bw", "avx2"), ["x86-avx512vnni", "x86-avx2"]),  # Zen4, Ice Lake: no AVX-VNNI
    (("avx2",), ["x86-avx2"]),
    ((), []),
])
def test_levels_a_cpu_runs(features, levels):
    assert targets.x86_levels_for(features) == levels


@pytest.mark.parametrize("name, present, absent", [
    ("x86-amx", ["tdpbusd", "ldtilecfg", "vpdpbusd"], []),  # QK^T-like GEMMs stay VNNI; compiled, not run
    ("x86-noamx", [], ["tdpbusd", "ldtilecfg"]),
    ("x86-avx512vnni", ["vpdpbusd", "zmm"], ["tdpbusd"]),
    ("x86-avxvnni", ["vpdpbusd", "ymm"], ["zmm", "tdpbusd"]),
    ("x86-avx2", ["vpmaddwd", "ymm"], ["vpdpbusd", "vpmaddubsw", "zmm"]),
])
def test_level_kernels_use_its_instructions(name, present, absent):
    mod = tvm.IRModule()
    for case in ("linear_amx_2x2_tiles", "qk_transposed_odd"):
        make, inputs = CASES[case]
        mod[case] = single_op_module(make, inputs)["main"].with_attr("global_symbol", case)
    asm = _asm(build(mod, targets.resolve_target(name).target))
    assert [op for op in present if op not in asm] == [] and [op for op in absent if op in asm] == []


# ------------------------------------------------------------------------- a whole model built for a level


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    path = save_tiny_classifier(tmp_path_factory.mktemp("tiny") / "model")
    return ibert_tvm.from_pretrained(str(path), calibration=calibration_texts())


@pytest.fixture(scope="module")
def export(quantized, tmp_path_factory) -> Callable[[str], Path]:
    """`export(target)`: the tiny classifier compiled for `target` (batch 2 x 16 tokens) and exported, once per
    target in this module (the library is only read by the tests)."""
    folder = tmp_path_factory.mktemp("exports")

    @functools.cache
    def _export(target: str) -> Path:
        lib = ibert_tvm.compile(quantized, target, tuning_logs=False, batch_sizes=(2,), seq_lengths=(16,))
        return lib.export(folder / f"{target}.so")

    return _export


@pytest.fixture(scope="module")
def host_logits(export):
    model = ibert_tvm.load(export("llvm"))
    return model(*model.encode_texts(held_out_texts()[:2]), integer=True)


@pytest.mark.parametrize("level", [pytest.param("x86-avx2", marks=_runs_here("x86-avx2")),
                                   pytest.param("x86-avx512vnni", marks=_runs_here("x86-avx512vnni"))])
def test_model_built_for_a_level_runs_here_identically(export, host_logits, level):
    model = ibert_tvm.load(export(level))
    assert model.meta["target"]["name"] == level
    np.testing.assert_array_equal(model(*model.encode_texts(held_out_texts()[:2]), integer=True), host_logits)


def test_library_this_cpu_cannot_run_names_the_level_it_could(export, monkeypatch):
    """An x86-avx512vnni library on an AVX2-only CPU: refused, naming what is lacking and `x86-avx2`."""
    path = export("x86-avx512vnni")
    monkeypatch.setattr(artifact, "host_cpu_features", lambda: ("avx2",))
    with pytest.raises(ibert_tvm.ArtifactError, match="built for a CPU with avx512bw, avx512vnni, which this CPU "
                                                      "lacks; .* or for 'x86-avx2' to run on this CPU"):
        ibert_tvm.load(path)


def test_tuning_for_a_level_this_cpu_lacks_says_so_of_the_target(monkeypatch):
    """`tune` and `ibert-tvm targets` say what the CPU lacks for the target, not an artifact's "built for"."""
    monkeypatch.setattr(artifact, "host_cpu_features", lambda: ("avx2",))
    spec = targets.resolve_target("x86-avx512vnni")
    assert artifact.why_not_runnable_here(spec) == "this CPU lacks avx512bw, avx512vnni"
    with pytest.raises(ValueError, match=r"cannot tune for 'x86-avx512vnni' on this machine \(this CPU lacks "
                                         r"avx512bw, avx512vnni\): .*--rpc"):
        tuning.check_measured_here(spec, None)
    assert artifact.why_not_runnable_here(targets.resolve_target("x86-avx2")) == ""
