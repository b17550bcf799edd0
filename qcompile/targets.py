"""Target descriptions, loaded from the data files in `targets/` (one TOML file a target).

Passes and schedules read capabilities from `TargetSpec`; nothing in the compiler branches on
a target's name. `detect_host()` reads the running CPU's flags and picks the best runnable
target; `resolve()` turns a user's `--target` into a spec, refusing targets the CPU cannot
execute unless cross-compiling.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import platform
import tomllib
from pathlib import Path
from typing import Any

from .errors import TargetError


@dataclasses.dataclass(frozen=True)
class Int8Capability:
    dot_product: str          # e.g. "vpdpbusd.512", "pmaddubsw.256", "opencl.dot4"
    lanes: int                # s32 accumulators per instruction
    reduce: int               # u8*s8 products summed into one s32 lane
    activation_dtype: str
    weight_dtype: str
    saturation: str           # "none" | "widen"
    data_layout: str
    weight_layout: str
    dense_weight_layout: str
    # what `qcompile quantize --overflow-fix auto` does for this target: "all" gives 7-bit
    # weights, with which a `widen` target's kernels may use the saturating vpmaddubsw pair
    # (proven exact per layer at build time); "none" where the dot product cannot saturate
    ptq_overflow_fix: str = "none"
    # 3x3 stride-1 convs as exact integer Winograd ("f2x2_3x3": schedules/x86/winograd.py)
    # where the s16 GEMM beats the direct kernel (targets without VNNI), or "none"
    winograd: str = "none"


FAMILIES = ("x86", "opencl")
WINOGRAD_KINDS = ("none", "f2x2_3x3")


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    family: str               # "x86" | "opencl"
    host_priority: int
    quantization_rules: str
    mcpu: str
    mattr: tuple[str, ...]
    required_flags: tuple[str, ...]
    vector_bits: int
    int8: Int8Capability
    tuning: dict[str, Any]
    opencl: dict[str, Any]
    source: str               # the file it was read from

    def tvm_target(self, num_cores: int | None = None):
        """The `tvm.target.Target` for this spec (a dict target: TVM 0.27 takes no strings)."""
        import tvm

        host = {"kind": "llvm", "mcpu": self.mcpu}
        if self.mattr:
            host["mattr"] = list(self.mattr)
        if self.family == "opencl":
            cfg = {"kind": "opencl", "host": host}
            cfg.update(self.opencl)
            return tvm.target.Target(cfg)
        cfg = dict(host)
        cfg["num-cores"] = int(num_cores or default_num_threads())
        return tvm.target.Target(cfg)

    def missing_flags(self, flags: set[str] | None = None) -> list[str]:
        flags = cpu_flags() if flags is None else flags
        return [f for f in self.required_flags if f not in flags]

    def runnable_here(self) -> bool:
        if self.family != "x86":
            return False
        return platform.machine() in ("x86_64", "AMD64") and not self.missing_flags()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _targets_dir() -> Path:
    env = os.environ.get("QCOMPILE_TARGETS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "targets"
    if repo.is_dir():
        return repo
    return Path(str(importlib.resources.files("qcompile._targets")))


def _parse(path: Path) -> TargetSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise TargetError(f"target file {path} is not valid TOML: {err}") from err
    try:
        llvm = raw.get("llvm", {})
        cpu = raw.get("cpu", {})
        if raw.get("family") not in FAMILIES:
            raise TargetError(f"target file {path}: family = {raw.get('family')!r}; expected one "
                              f"of {', '.join(FAMILIES)}")
        spec = TargetSpec(
            name=raw["name"],
            description=raw["description"],
            family=raw["family"],
            host_priority=int(raw.get("host_priority", 0)),
            quantization_rules=raw.get("quantization_rules", "cpu"),
            mcpu=llvm.get("mcpu", "generic"),
            mattr=tuple(llvm.get("mattr", [])),
            required_flags=tuple(cpu.get("required_flags", [])),
            vector_bits=int(cpu.get("vector_bits", 128)),
            int8=Int8Capability(**raw["int8"]),
            tuning=dict(raw.get("tuning", {})),
            opencl=dict(raw.get("opencl", {})),
            source=str(path),
        )
    except KeyError as err:
        raise TargetError(f"target file {path} lacks the field {err}; see the other files in "
                          f"{path.parent} for the schema") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise TargetError(f"target file {path} has a field of the wrong type or value: {err}"
                          ) from err
    for f in dataclasses.fields(Int8Capability):
        v = getattr(spec.int8, f.name)
        if not isinstance(v, int if f.type == "int" else str) or isinstance(v, bool):
            raise TargetError(f"target file {path} has a field of the wrong type or value: "
                              f"int8.{f.name} = {v!r} should be {f.type}")
    if spec.int8.winograd not in WINOGRAD_KINDS:
        raise TargetError(f"target file {path}: int8.winograd = {spec.int8.winograd!r}; "
                          f"expected one of {', '.join(WINOGRAD_KINDS)}")
    if spec.int8.lanes <= 0 or spec.int8.reduce <= 0 or spec.vector_bits <= 0:
        raise TargetError(f"target file {path}: int8.lanes, int8.reduce and cpu.vector_bits "
                          "must be positive")
    return spec


@functools.lru_cache(maxsize=None)
def all_targets() -> dict[str, TargetSpec]:
    """Every target described in `targets/`, by name."""
    specs = {}
    for path in sorted(_targets_dir().glob("*.toml")):
        spec = _parse(path)
        specs[spec.name] = spec
    if not specs:
        raise TargetError(f"no target files found in {_targets_dir()}")
    return specs


def quantization_rules(spec: TargetSpec) -> dict[str, Any]:
    """The op quantization rules a target uses (`targets/_rules/<name>.toml`)."""
    path = _targets_dir() / "_rules" / f"{spec.quantization_rules}.toml"
    if not path.is_file():
        raise TargetError(f"target {spec.name!r} names quantization rules {path} that do not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise TargetError(f"quantization rules {path} (of target {spec.name!r}) are not valid "
                          f"TOML: {err}") from err


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The running CPU's feature flags as Linux names them in /proc/cpuinfo."""
    override = os.environ.get("QCOMPILE_CPU_FLAGS")
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def default_num_threads() -> int:
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit():
        return int(env)
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def detect_host() -> TargetSpec:
    """The best target the running CPU can execute (highest host_priority)."""
    runnable = [t for t in all_targets().values() if t.runnable_here()]
    if not runnable:
        raise TargetError(
            "no qcompile target can run on this CPU (flags read from /proc/cpuinfo: "
            f"{' '.join(sorted(cpu_flags())) or 'none'}); pass --target NAME --cross to "
            "cross-compile")
    return max(runnable, key=lambda t: t.host_priority)


def spec_of(target) -> TargetSpec | None:
    """The target file a `tvm.target.Target` was made from (`TargetSpec.tvm_target`): the
    spec whose LLVM `mcpu` and `mattr` it carries exactly, or None (a hand-made target)."""
    host = target.host if getattr(target, "host", None) is not None else target
    try:
        mcpu = str(host.attrs.get("mcpu", ""))
        mattr = tuple(str(a) for a in host.attrs.get("mattr", []))
    except (AttributeError, TypeError):  # a target without attrs
        return None
    family = "opencl" if target.kind.name == "opencl" else "x86"
    for spec in all_targets().values():
        if spec.family == family and spec.mcpu == mcpu and tuple(spec.mattr) == mattr:
            return spec
    return None


def resolve(name: str, cross: bool = False) -> TargetSpec:
    """Turn a `--target` value into a spec; refuse what this CPU cannot run unless `cross`."""
    if name == "host":
        return detect_host()
    targets = all_targets()
    if name not in targets:
        import difflib

        near = difflib.get_close_matches(name, list(targets), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise TargetError(
            f"unknown target {name!r} (--target). Known targets: {', '.join(sorted(targets))}, "
            f"or 'host'.{hint} `qcompile targets` lists them.")
    spec = targets[name]
    if spec.family == "x86" and not cross:
        missing = spec.missing_flags()
        if missing or platform.machine() not in ("x86_64", "AMD64"):
            raise TargetError(
                f"target {name!r} needs CPU features this machine lacks "
                f"({', '.join(missing) or platform.machine()}); code built for it would stop "
                f"with an illegal instruction here. Use --target host (picks "
                f"{_host_name_or_none()}), or add --cross to build for another machine.")
    return spec


def _host_name_or_none() -> str:
    try:
        return repr(detect_host().name)
    except TargetError:
        return "none"
