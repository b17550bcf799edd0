"""Relax module -> VM executable for a target: fusion, schedules, TVM build.

Fusion is TVM's (LegalizeOps, FuseOps, FuseTIR), so task extraction for tuning and the final
build see the same fused PrimFuncs and database keys match. Scheduling, in order of
preference: a tuning-database record (MetaSchedule), qcompile's own kernel templates' default
schedules, then a generic default for what is left (parallel outer loops + vectorized inner
loops), so an untuned build still uses every core.
"""
from __future__ import annotations

import re

from .fallbacks import tvm_errors


def _pre_fusion_passes(fast_math: bool = False, cpu: bool = True):
    from tvm import relax

    from .relay_passes.fuse_softmax_matmul import FuseSoftmaxMatmulPass
    from .schedules import vector_math

    # (OpenCL has vector exp/erf built in: the overrides are for LLVM CPU targets only)
    return [
        # --fast-math: erf/exp/tanh as TVM's rational/polynomial approximations (|err| ~1e-7
        # in f32), off by default. The default build legalizes f32 exp / erf with qcompile's
        # vectorizable versions (<= 2 ulp, schedules/vector_math.py) instead of TVM's, which
        # LLVM can only scalarize into libm calls; softmax / layer norm (both builds) with
        # lane-split reductions the generic schedule vectorizes along the reduced axis.
        *([relax.transform.FastMathTransform()] if fast_math else []),
        relax.transform.DecomposeOpsForInference(),
        # attention's softmax(x) @ v as one kernel (relay_passes/fuse_softmax_matmul.py)
        *([FuseSoftmaxMatmulPass()] if cpu else []),
        relax.transform.LegalizeOps(
            customize_legalize_map=vector_math.legalize_map(fast_math) if cpu else None),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
    ]


def fuse(mod, target, fast_math: bool = False):
    """Legalize and fuse (what task extraction and the build both see)."""
    return fuse_with_map(mod, target, fast_math)[0]


def fuse_with_map(mod, target, fast_math: bool = False):
    """Legalize and fuse; returns (fused module, kernel map).

    The kernel map says, for each PrimFunc the VM will call, which bindings it computes
    (the named ones are ONNX nodes, through the frontend's provenance; `anonymous` tells the
    others): read after FuseOps, when each fused group is still a Relax function of the
    original bindings."""
    import tvm
    from tvm import relax

    with target, tvm.transform.PassContext(opt_level=3):
        passes = _pre_fusion_passes(fast_math, cpu=target.kind.name == "llvm")
        try:
            grouped = tvm.transform.Sequential(passes)(mod)
        except tvm_errors() as err:
            raise _not_compiled(err, "lowering of an op to TIR (LegalizeOps)", target) from err
        kernel_map = _kernel_map(grouped)
        fused = tvm.transform.Sequential([relax.transform.FuseTIR(),
                                          relax.transform.DeadCodeElimination()])(grouped)
    return fused, kernel_map


def _kernel_map(grouped) -> dict[str, list[str]]:
    from tvm import relax

    def bindings(func):
        for block in func.body.blocks:
            yield from block.bindings

    out: dict[str, list[str]] = {}
    funcs = {gv.name_hint: f for gv, f in grouped.functions.items()}
    for b in bindings(grouped["main"]):
        val = b.value
        if not isinstance(val, relax.Call):
            continue
        callee = val.op
        if isinstance(callee, relax.GlobalVar) and isinstance(funcs.get(callee.name_hint),
                                                               relax.Function):
            inner = funcs[callee.name_hint]
            names = [ib.var.name for ib in bindings(inner)
                     if isinstance(ib.value, relax.Call)]
            out.setdefault(callee.name_hint, []).extend(names)
        elif getattr(callee, "name", None) == "relax.call_tir":
            gv = val.args[0]
            out.setdefault(gv.name_hint, []).append(b.var.name)
    return out


def anonymous(name: str) -> bool:
    """A binding the frontend or a pass named without an ONNX node (`lv12`, `gv`)."""
    name = _BLOCKED.sub("", name)
    return name.startswith("lv") and (name[2:].isdigit() or name == "lv") or name.startswith("gv")


# the x86 dispatch binds a value in the blocked layout as `<name>_nchw<L>c`
_BLOCKED = re.compile(r"_nchw\d+c$")


def onnx_nodes(bindings, node_names: dict[str, str]) -> list[str]:
    """The ONNX nodes of a kernel's bindings, in order, once each: anonymous bindings left
    out, the dispatch's blocked-layout copies (`conv1_nchw8c`) named after their node."""
    out = []
    for b in bindings:
        if anonymous(b):
            continue
        base = b if b in node_names else _BLOCKED.sub("", b)
        out.append(node_names.get(base, base))
    return list(dict.fromkeys(out))


def compile_fused(mod, target, database=None, default_schedule=None, fallbacks=None,
                  stats=None):
    """Build a fused module; `database` (MetaSchedule) records win over default schedules.
    `fallbacks` (a `qcompile.fallbacks.FallbackLog`) receives what the generic scheduler
    could not schedule. Kernels whose output can take a dead input's memory run in place
    (`relay_passes/use_inplace_outputs.py`); `stats` (a dict), when given, receives
    `inplace_calls`, how many calls do."""
    import tvm
    from tvm import relax

    from .relay_passes import use_inplace_outputs as inplace

    from .schedules import generic as default_sched
    from .tvm_compat import vectorize_nearbyint

    vectorize_nearbyint()

    @tvm.transform.module_pass(opt_level=3, name="qcompile.Schedule")
    def _schedule(m, _ctx):
        if database is not None:
            with database:
                m = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(m)
            m = _mark_db_scheduled(m)
        return default_sched.apply(m, target, default_schedule, fallbacks=fallbacks)

    @tvm.transform.module_pass(opt_level=3, name="qcompile.Pipeline")
    def _pipeline(m, _ctx):
        candidates = inplace.inplace_candidates(m)  # read on the unscheduled TE blocks
        m = _schedule(m)
        m = relax.transform.RewriteDataflowReshape()(m)
        m, n = inplace.use_inplace_outputs(m, candidates)
        if stats is not None:
            stats["inplace_calls"] = n
        backend = _backend_pipeline(target)
        return tvm.transform.Sequential(backend.dataflow_lower_passes(target)
                                        + backend.finalize_passes(target))(m)

    # CPU: small per-chunk buffers of parallel loops on the stack (tir_stack_allocs.py)
    tir_pipeline = "default"
    if target.kind.name == "llvm":
        from .tir_stack_allocs import register_pipeline

        tir_pipeline = register_pipeline()
    try:
        with target, tvm.transform.PassContext(opt_level=3):
            return tvm.compile(mod, target=target, relax_pipeline=_pipeline,
                               tir_pipeline=tir_pipeline)
    except tvm_errors() as err:
        raise _not_compiled(err, "TVM's build", target) from err


def _not_compiled(err, stage: str, target):
    """An op TVM cannot lower or compile (int pow, max over bool, cumsum/topk without their
    library kernels, casts to fp4, ...): one ModelError naming the failed check, not a trace."""
    from .errors import ModelError

    lines = [ln.strip() for ln in str(err).splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    return ModelError(f"{stage} failed for {target.kind.name}: {type(err).__name__}: "
                      f"{lines[-1][:300] if lines else err}. qcompile's TVM build does not "
                      "support the op or dtype named there; replace it in the model or report it")


def _mark_db_scheduled(mod):
    """MetaScheduleApplyDatabase marks what it scheduled `tirx.is_scheduled` (TVM 0.27's
    name); qcompile's default schedulers skip functions marked `tir.is_scheduled`. Mark the
    database's functions with both, so no default schedule replaces a tuned one."""
    from tvm import tirx

    updates = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None \
                and bool(func.attrs.get("tirx.is_scheduled", False)) \
                and not bool(func.attrs.get("tir.is_scheduled", False)):
            updates[gv] = func.with_attr("tir.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _backend_pipeline(target):
    """TVM's per-backend pass lists (the package does not re-export them in 0.27)."""
    if target.kind.name == "llvm":
        from tvm.relax.backend.cpu_generic import pipeline
    else:
        from tvm.relax.backend.gpu_generic import pipeline
    return pipeline
