"""Relax module -> VM executable for a target: fusion, schedules, TVM build.

Fusion is TVM's (LegalizeOps, FuseOps, FuseTIR), so task extraction for tuning and the final
build see the same fused PrimFuncs and database keys match. Scheduling, in order of
preference: a tuning-database record (MetaSchedule), qcompile's own kernel templates' default
schedules, then a generic default for what is left (parallel outer loops + vectorized inner
loops), so an untuned build still uses every core.
"""
from __future__ import annotations

from typing import Any


def fusion_passes():
    from tvm import relax

    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def fuse(mod, target):
    import tvm

    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(fusion_passes())(mod)


def compile_fused(mod, target, database=None, default_schedule=None):
    """Build a fused module; `database` (MetaSchedule) records win over default schedules."""
    import tvm
    from tvm import relax

    from .schedules import generic as default_sched

    @tvm.transform.module_pass(opt_level=3, name="qcompile.Schedule")
    def _schedule(m, _ctx):
        if database is not None:
            with database:
                m = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(m)
        return default_sched.apply(m, target, default_schedule)

    @tvm.transform.module_pass(opt_level=3, name="qcompile.Pipeline")
    def _pipeline(m, _ctx):
        m = _schedule(m)
        backend = _backend_pipeline(target)
        return tvm.transform.Sequential(backend.dataflow_lower_passes(target)
                                        + backend.finalize_passes(target))(m)

    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.compile(mod, target=target, relax_pipeline=_pipeline)


def _backend_pipeline(target):
    """TVM's per-backend pass lists (the package does not re-export them in 0.27)."""
    if target.kind.name == "llvm":
        from tvm.relax.backend.cpu_generic import pipeline
    else:
        from tvm.relax.backend.gpu_generic import pipeline
    return pipeline
