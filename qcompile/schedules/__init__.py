"""TIR compute + schedule templates per target, and their MetaSchedule rules.

`qcompile.schedules.x86` holds the int8 kernels for x86 CPUs (VNNI, AVX-512, AVX2, SSE4.2):
tensor intrinsics, TE computes emitted into Relax with `call_te`, and the schedules that
tile, tensorize and fuse the epilogue of the fused PrimFuncs containing them
(docs/kernels.md). `generic` schedules whatever no template or tuning record covered.
The OpenCL (Intel GPU) templates live in `qcompile.gpu.schedules` (docs/gpu.md).

`dispatch_for(mod, spec)` is the build's entry point: it rewrites a module after the
low-precision passes into the target's kernels and returns the default-schedule function
for them.
"""
from __future__ import annotations


def dispatch_for(mod, spec, report: list | None = None, fallbacks=None, winograd: bool = True):
    """(rewritten module, default_schedule) for `spec`'s int8 kernels.

    `default_schedule(fused_mod, target) -> fused_mod` schedules the fused PrimFuncs that hold
    the kernels (and the region-border layout transforms) and is meant to run after
    `MetaScheduleApplyDatabase` and before a generic scheduler. `report`, if given, receives
    one entry per integer op (its kernel and intrinsic variant, or why it was left alone);
    `fallbacks` (a `qcompile.fallbacks.FallbackLog`) every kernel whose template schedule
    did not apply. `winograd=False` keeps 3x3 stride-1 convs on the direct kernels.
    Targets without int8 kernel templates here get `(mod, None)`."""
    if spec.family != "x86":
        return mod, None
    from qcompile.relay_passes import x86_int8_dispatch

    from .x86 import schedule

    out = x86_int8_dispatch.dispatch(mod, spec, report=report, winograd=winograd)

    def default_schedule(fused, target=None):
        return schedule.apply_default_schedules(fused, spec, fallbacks=fallbacks)

    return out, default_schedule
