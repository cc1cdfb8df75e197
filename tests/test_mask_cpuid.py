"""bench/mask_cpuid.c, the shim behind `bench_peers.py --as-cpu`: CPUID shows exactly the level's features,
and a real segmentation fault under it still ends the process with SIGSEGV."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = r"""
#include <cpuid.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  unsigned a, b, c, d;
  if (argc > 1 && !strcmp(argv[1], "crash")) { volatile int *p = 0; return *p; }
  __cpuid_count(7, 0, a, b, c, d);
  printf("avx512f=%d avx512_vnni=%d amx_int8=%d ", !!(b & 1u << 16), !!(c & 1u << 11), !!(d & 1u << 25));
  __cpuid_count(7, 1, a, b, c, d);
  printf("avx_vnni=%d\n", !!(a & 1u << 4));
  return 0;
}
"""
needs_fault = pytest.mark.skipif(
    not Path("/proc/cpuinfo").exists() or "cpuid_fault" not in Path("/proc/cpuinfo").read_text()
    or shutil.which("cc") is None, reason="needs Linux CPUID faulting (cpuid_fault) and a C compiler")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("mask_cpuid")
    (out / "probe.c").write_text(PROBE)
    subprocess.run(["cc", "-O2", "-o", str(out / "probe"), str(out / "probe.c")], check=True)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out / "mask.so"), str(ROOT / "bench/mask_cpuid.c"),
                    "-ldl"], check=True)
    return out / "probe", out / "mask.so"


def features(probe: Path, shim: Path | None, level: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "IBERT_MASK_CPUID")}
    if shim:
        env.update(LD_PRELOAD=str(shim), IBERT_MASK_CPUID=level)
    return subprocess.run([str(probe), *args], env=env, capture_output=True, text=True, timeout=30)


def parse(out: str) -> dict[str, bool]:
    return {k: v == "1" for k, v in (item.split("=") for item in out.split())}


@needs_fault
@pytest.mark.parametrize("level, keeps", [("avx2", set()), ("avxvnni", {"avx_vnni"}),
                                          ("avx512vnni", {"avx512f", "avx512_vnni"})])
def test_cpuid_shows_exactly_the_level(built, level, keeps):
    probe, shim = built
    host = parse(features(probe, None, None).stdout)
    masked = parse(features(probe, shim, level).stdout)
    assert masked == {k: host[k] and k in keeps for k in host}, (host, masked)


@needs_fault
def test_unknown_level_and_real_faults_are_not_swallowed(built):
    probe, shim = built
    unknown = features(probe, shim, "avx9")
    assert unknown.returncode == 2 and "unknown level avx9" in unknown.stderr
    crash = features(probe, shim, "avx2", "crash")
    assert crash.returncode == -signal.SIGSEGV
