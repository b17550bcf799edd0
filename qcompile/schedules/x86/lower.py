"""Fuse and schedule a module the x86 int8 dispatch rewrote (kernel tests, scripts).

`lower(mod, spec)` runs the build's own fusion (`qcompile.codegen.fuse`: legalize with the
vector-math overrides, FuseOps, FuseTIR) and schedules the fused kernels: a MetaSchedule
`database` record where there is one, qcompile's default schedules for the rest. The result
goes to `tvm.compile(mod, target=spec.tvm_target())`, whose legalize passes then find
nothing left to do. The build itself goes through `qcompile.codegen.compile_fused`, which
adds the generic schedules and the fallback log.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .schedule import apply_default_schedules, register_rules


def lower(mod: tvm.IRModule, spec, database=None, strict: bool = False) -> tvm.IRModule:
    from qcompile import codegen

    register_rules()
    target = spec.tvm_target()
    mod = codegen.fuse(mod, target)
    if database is not None:
        with target, database:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return apply_default_schedules(mod, spec, strict=strict)
