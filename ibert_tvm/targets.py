"""The targets users name (`t4`, `cuda`, `aarch64`, `aarch64-neon`, `llvm` / `x86`, the x86 levels), resolved
to TVM targets.

One registry for `compile`, `tune`, the CLI and the artifact metadata. Each entry knows its schedule family
(the `schedules/` module that schedules and tunes it) and whether exporting it needs a cross compiler.
`llvm` is this machine's CPU, its features detected through LLVM and /proc/cpuinfo, never assumed: the same
name may mean AVX2 on one machine and AMX on another, and the artifact metadata records which. The x86 levels
(`x86-amx`, `x86-avx512vnni`, `x86-avxvnni`, `x86-avx2`) name a fixed feature set, for a library that must run
on a fleet of CPUs rather than on the machine that builds it; `x86-noamx` is this CPU without AMX.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
import subprocess
from dataclasses import dataclass

import tvm
from tvm.target import Target, codegen

__all__ = ["ALIASES", "HOST_TARGETS", "TARGET_NAMES", "CudaArch", "TargetSpec", "UnknownTargetError", "X86_LEVELS",
           "amx_usable", "host_cpu_features", "host_cpu_flags", "host_cpu_name", "parse_cuda_arch", "resolve_target",
           "target_descriptions", "x86_levels_for"]


class UnknownTargetError(ValueError):
    """A target name the registry does not know, or a target that cannot be used here (message says why)."""


@dataclass(frozen=True)
class TargetSpec:
    """A named target: the TVM target (with its host), its schedule family and how its library is exported."""

    name: str
    family: str  # "cuda" | "arm" | "x86": the `schedules/<family>.py` module that schedules it
    target: Target
    cross_compiler: str | None = None  # the C compiler `export_library` needs, None for the host's own

    @property
    def is_gpu(self) -> bool:
        return self.family == "cuda"

    @property
    def features(self) -> tuple[str, ...]:
        """The int8 dot-product features the schedules may use (e.g. 'dotprod', 'avx512vnni', 'sm_75')."""
        if self.family == "cuda":
            return (str(self.target.attrs["arch"]),)
        if self.family == "arm":
            return tuple(sorted(m.lstrip("+") for m in self.target.attrs.get("mattr", []) if m.startswith("+")))
        return host_cpu_features(self.target)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.features) or 'generic'}): {self.target}"


_AARCH64_TRIPLE = "aarch64-linux-gnu"
_AARCH64_CC = "aarch64-linux-gnu-g++"
_AMX_MATTR = ["+amx-tile", "+amx-int8"]


def host_cpu_features(target: Target | None = None) -> tuple[str, ...]:
    """The int8-relevant x86 features of `target` (default: this machine's CPU), widest first."""
    from .schedules.x86 import int8_features  # lazily: one list of the features, next to the schedules using them

    return int8_features(target or _host())


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (None where there is none, or it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field),
                        None)
    except OSError:
        return None


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """This CPU's flags as Linux lists them in /proc/cpuinfo (empty off Linux x86, or where it cannot be read)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return frozenset()
    return frozenset((_cpuinfo("flags") or "").split())


def host_cpu_name() -> str:
    """This machine's CPU model as /proc/cpuinfo names it (its architecture where it names none), for results."""
    return _cpuinfo("model name") or platform.machine()


@functools.cache
def amx_usable() -> bool:
    """Whether this CPU has AMX int8 tiles and Linux lets this process use them (tile data is granted per
    process on request, `arch_prctl(ARCH_REQ_XCOMP_PERM)`; a kernel without it, or a hypervisor that hides the
    state, refuses). LLVM's host CPU name does not say: a VM may report a CPU model that has no AMX."""
    if not {"amx_tile", "amx_int8"} <= host_cpu_flags():
        return False
    from .schedules.x86 import AMX_PERMISSION_SYSCALL  # the request the AMX kernels themselves make

    return ctypes.CDLL(None).syscall(*AMX_PERMISSION_SYSCALL) == 0


#: the vector features the schedules use (AVX-512 Foundation, that the others build on, first) -> the
#: /proc/cpuinfo flag that says the CPU has it
_CPUINFO_FLAGS = {"avx2": "avx2", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vnni": "avx512_vnni",
                  "avxvnni": "avx_vnni"}


def _host(amx: bool = True) -> Target:
    """This machine's CPU as an llvm target: its CPU model (so LLVM uses every vector feature and cost it
    knows), with the int8 features corrected by what the CPU itself lists. LLVM names the model from CPUID's
    family, so a VM may report a model that lacks a feature the CPU has (avx_vnni, AMX) or has one the
    hypervisor hides. AMX is added where the CPU and the OS allow it, and taken away with amx=False (disabling
    amx-tile disables every AMX feature that builds on it)."""
    cpu = codegen.llvm_get_system_cpu()
    model = Target({"kind": "llvm", "mcpu": cpu})
    flags = host_cpu_flags()
    mattr = []
    for feature, flag in _CPUINFO_FLAGS.items() if flags else ():
        if (flag in flags) != codegen.llvm_cpu_has_features(feature, model):
            mattr.append(("+" if flag in flags else "-") + feature)
    mattr += (_AMX_MATTR if amx_usable() else []) if amx else ["-amx-tile"]
    return Target({"kind": "llvm", "mcpu": cpu, **({"mattr": mattr} if mattr else {})})


def _x86(mcpu: str, mattr: list[str] | None = None) -> Target:
    """A fixed x86-64 feature level: LLVM's generic level CPUs (x86-64-v3: AVX2; x86-64-v4: AVX-512) plus the
    int8 features named, so the code runs on every CPU that has them, whichever vendor. Where those include
    VNNI, `prefetchw` too (every CPU with VNNI has it, and the levels leave it out): without it LLVM emits the
    GEMMs' output prefetches (`schedules/gemm_prefetch.py`) as read prefetches, which do not take the lines
    for writing."""
    mattr = [*(mattr or []), *(["+prfchw"] if any("vnni" in m for m in mattr or []) else [])]
    return Target({"kind": "llvm", "mcpu": mcpu, **({"mattr": mattr} if mattr else {})})


@dataclass(frozen=True)
class CudaArch:
    """A CUDA arch `sm_XY` (compute capability X.Y), or `sm_XYa`: arch-specific, for exactly that capability."""

    major: int
    minor: int
    arch_specific: bool

    @property
    def sm(self) -> int:
        """The SM number: 75 for sm_75, 90 for sm_90a, 121 for sm_121."""
        return self.major * 10 + self.minor

    def runs_on(self, major: int, minor: int) -> bool:
        """Whether a cubin for this arch runs on a GPU of compute capability major.minor: one of the same major
        and a minor at least this one's (a cubin's binary compatibility), exactly this one for an `a` arch."""
        if self.arch_specific:
            return (major, minor) == (self.major, self.minor)
        return major == self.major and minor >= self.minor


def parse_cuda_arch(arch: str) -> CudaArch:
    """`sm_XY` / `sm_XYa` (two or three digits, the last one the minor) -> CudaArch; UnknownTargetError otherwise."""
    match = re.fullmatch(r"sm_(\d{2,3})(a?)", arch)
    if match is None:
        raise UnknownTargetError(f"CUDA arch '{arch}' is not of the form sm_XX (e.g. cuda:sm_75)")
    sm = int(match[1])
    return CudaArch(sm // 10, sm % 10, bool(match[2]))


#: The oldest SM that TVM's CUDA runtime here builds for, where no nvcc says which it compiles for: the runtime
#: links the CUDA 13 runtime library (`cuda_toolchain`), and CUDA 13's nvcc compiles sm_75 and newer. (The
#: schedules need no more: their SIMT GEMMs run on any SM, dp4a from sm_61, tensor cores from sm_72.)
_CUDA_MIN_SM = 75
#: The oldest SM with arch-specific (`a`) variants (sm_90a).
_CUDA_MIN_ARCH_SPECIFIC_SM = 90


def _nvcc_sms() -> tuple[int, ...] | None:
    """The SM numbers the nvcc on PATH compiles for (`nvcc --list-gpu-code`), None without an nvcc that says."""
    from .cuda_toolchain import CudaToolchainError, find_nvcc  # lazily: only CUDA targets ask

    try:
        return _sms_of(find_nvcc())
    except CudaToolchainError:
        return None


@functools.cache
def _sms_of(nvcc: str) -> tuple[int, ...] | None:
    """`_nvcc_sms` of one nvcc, asked once per process."""
    try:
        done = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sms = sorted({int(sm) for sm in re.findall(r"\bsm_(\d+)\b", done.stdout)})
    return tuple(sms) if done.returncode == 0 and sms else None


def _check_cuda_arch_buildable(arch: str) -> None:
    """Refuse an arch the installed nvcc (or, without one, CUDA 13) does not compile for: nvcc would fail only
    after code generation, printing the whole CUDA source."""
    parsed, sms = parse_cuda_arch(arch), _nvcc_sms()
    if sms is None:
        known, builds = parsed.sm >= _CUDA_MIN_SM, f"TVM's CUDA 13 runtime builds for sm_{_CUDA_MIN_SM} and newer"
    else:
        known = parsed.sm in sms
        builds = f"the installed nvcc compiles sm_{sms[0]} to sm_{sms[-1]} ({', '.join(f'sm_{sm}' for sm in sms)})"
    if not known or (parsed.arch_specific and parsed.sm < _CUDA_MIN_ARCH_SPECIFIC_SM):
        raise UnknownTargetError(f"CUDA arch '{arch}' is not supported: {builds}, and arch-specific 'a' variants "
                                 f"from sm_{_CUDA_MIN_ARCH_SPECIFIC_SM}")


def _cuda(arch: str) -> Target:
    """The T4's CUDA target with `arch`, once the installed nvcc is known to compile for it."""
    _check_cuda_arch_buildable(arch)
    base = dict(Target("nvidia/nvidia-t4").export())
    base.pop("tag", None)
    return Target({**base, "arch": arch}, host=Target("llvm"))  # generic x86-64 host code: any T4 server runs it


def _detected_cuda_arch() -> str:
    dev = tvm.cuda(0)
    if not dev.exist:
        raise UnknownTargetError("target 'cuda' detects the arch from the GPU, and no CUDA GPU is present here; "
                                 "name one: 't4' or 'cuda:sm_XX'")
    return "sm_" + dev.compute_version.replace(".", "")


def _aarch64(mcpu: str, mattr: list[str]) -> Target:
    return Target({"kind": "llvm", "mtriple": _AARCH64_TRIPLE, "mcpu": mcpu, "mattr": mattr})


#: name -> (description, factory). Factories run lazily: `cuda` needs a GPU only when it is asked for.
_REGISTRY = {
    "t4": ("NVIDIA T4 (sm_75): dp4a and INT8 tensor cores", lambda: ("cuda", _cuda("sm_75"), None)),
    "cuda": ("the CUDA GPU present here, its arch detected (or cuda:sm_XX)",
             lambda: ("cuda", _cuda(_detected_cuda_arch()), None)),
    "aarch64": ("ARMv8.2 CPU with dot product (Cortex-A76 / Neoverse-N1 class): NEON + sdot",
                lambda: ("arm", _aarch64("neoverse-n1", ["+neon", "+dotprod"]), _AARCH64_CC)),
    "aarch64-neon": ("ARMv8 CPU without dot product (Cortex-A72 class): NEON only",
                     lambda: ("arm", _aarch64("cortex-a72", ["+neon"]), _AARCH64_CC)),
    "llvm": ("this machine's x86 CPU, features detected (AMX / VNNI / AVX-512 / AVX2)", lambda: ("x86", _host(), None)),
    "x86-noamx": ("this machine's x86 CPU without AMX (for CPUs of its generation that lack AMX)",
                  lambda: ("x86", _host(amx=False), None)),
    "x86-amx": ("any x86 CPU with AMX int8 (Sapphire Rapids and later Xeons)",
                lambda: ("x86", _x86("x86-64-v4", ["+avx512vnni", *_AMX_MATTR]), None)),
    "x86-avx512vnni": ("any x86 CPU with AVX-512 VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, AMD Zen4)",
                       lambda: ("x86", _x86("x86-64-v4", ["+avx512vnni"]), None)),
    "x86-avxvnni": ("any x86 CPU with AVX2 and AVX-VNNI (Alder Lake and later client CPUs)",
                    lambda: ("x86", _x86("x86-64-v3", ["+avxvnni"]), None)),
    "x86-avx2": ("any x86 CPU with AVX2 (Haswell and later, AMD Zen)", lambda: ("x86", _x86("x86-64-v3"), None)),
}
#: the targets that describe the CPU of the machine that builds them: their tuning logs are per CPU model
HOST_TARGETS = ("llvm", "x86-noamx")
X86_LEVELS = ("x86-amx", "x86-avx512vnni", "x86-avxvnni", "x86-avx2")  # widest first
ALIASES = {"x86": "llvm", "host": "llvm", "nvidia/nvidia-t4": "t4"}
TARGET_NAMES = tuple(_REGISTRY) + tuple(ALIASES)


def target_descriptions() -> dict[str, str]:
    """Every registered target name -> what it means (the aliases and cuda:sm_XX aside)."""
    return {name: description for name, (description, _) in _REGISTRY.items()}


def x86_levels_for(features: tuple[str, ...] | list[str]) -> list[str]:
    """The fixed x86 levels a CPU with these int8 features runs (widest first): what to compile a library for
    when it must run on that CPU and others like it."""
    return [name for name in X86_LEVELS if set(resolve_target(name).features) <= set(features)]


def resolve_target(name: str | TargetSpec) -> TargetSpec:
    """The TargetSpec for a user-facing name; raises UnknownTargetError listing the known names."""
    if isinstance(name, TargetSpec):
        return name
    if not isinstance(name, str):
        raise UnknownTargetError(f"a target is named by a string ({', '.join(_REGISTRY)}), got {type(name).__name__}")
    key = name.strip().lower()
    if key.startswith("cuda:"):
        return TargetSpec(name=key, family="cuda", target=_cuda(key.split(":", 1)[1]))
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownTargetError(f"unknown target '{name}'; known: {', '.join(_REGISTRY)}, cuda:sm_XX (aliases: "
                                 f"{', '.join(ALIASES)}); `ibert-tvm targets` says what each means")
    family, target, cc = _REGISTRY[key][1]()
    return TargetSpec(name=key, family=family, target=target, cross_compiler=cc)
