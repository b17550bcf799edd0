"""OpenCL (Intel GPU) kernels: int8 templates, the dot-product intrinsic, default schedules.

- `intrinsics`: the DOT4 tensor intrinsic (u8 x s8 -> s32, 4 products) calling the OpenCL
  helper `qc_dot4_u8s8` (`dot()` of `cl_khr_integer_dot_product`, or a `char4` fallback),
  installed through the `tvm_callback_opencl_postproc` hook.
- `compute`: TE computes of the int8 ops (conv2d, depthwise conv2d, dense, batch-matmul)
  with their operands packed so every 4-element reduction group is contiguous.
- `schedule`: GPU schedules of fused PrimFuncs holding those computes (tile -> work-groups /
  work-items / register tile, epilogue fused at the register tile, DOT4 tensorized), the
  deterministic default and the MetaSchedule custom rules (`s_tir.meta_schedule.opencl.*`).
- `int8_dispatch`: the Relax rewrite from the integer IR (docs/integer-ir.md) to those computes.

`schedule_module` schedules a fused module for an OpenCL target: tuning-database records
first, then the int8 templates' default schedules, then TVM's dlight GPU rules for the rest
(the fp32 remainder).
"""
from __future__ import annotations


def dlight_rules():
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                   dl.gpu.GeneralReduction(), dl.gpu.Fallback())


def _scheduled(mod) -> set[str]:
    from tvm import tirx

    out = set()
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None \
                and "tirx.is_scheduled" in f.attrs and bool(f.attrs["tirx.is_scheduled"]):
            out.add(gv.name_hint)
    return out


def schedule_module(mod, target, database=None, record: dict | None = None, fallbacks=None):
    """Schedule every PrimFunc of a fused Relax module for an OpenCL `target`.

    `record` (if given) receives {PrimFunc name: "tuning database" | "int8 template" |
    "dlight"}. A function holding an int8 template that the template schedule refuses runs
    on the dlight rules instead and gets an entry in `fallbacks` (a
    `qcompile.fallbacks.FallbackLog`, model.json `fallbacks`); without a log, the refusal
    raises."""
    import tvm
    from tvm import relax

    from . import intrinsics, schedule

    intrinsics.register()
    schedule.register_rules()
    with target, tvm.transform.PassContext(opt_level=3):
        done = _scheduled(mod)
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        tuned = _scheduled(mod) - done
        mod = schedule.apply_default_schedules(mod, target, fallbacks=fallbacks)
        templated = _scheduled(mod) - done - tuned
        mod = dlight_rules()(mod)
        rest = _scheduled(mod) - done - tuned - templated
    if record is not None:
        for n in sorted(tuned):
            record[n] = "tuning database"
        for n in sorted(templated):
            record[n] = "int8 template"
        for n in sorted(rest):
            record[n] = "dlight"
    return mod


def dispatch(mod, spec, report: list | None = None):
    """Rewrite the integer ops of `mod` into the OpenCL int8 templates."""
    from .int8_dispatch import dispatch as _dispatch

    return _dispatch(mod, spec, report=report)
