"""Default schedules for fused PrimFuncs that neither a tuning record nor a qcompile kernel
template scheduled (the fp32 remainder of an int8 model, or an untuned fp32 build).

Expects: an IRModule after FuseTIR (and after MetaScheduleApplyDatabase / template
schedules, which mark their functions `tir.is_scheduled`).
Guarantees: every other PrimFunc is scheduled to use every core and the vector unit:
injective producers are inlined (into a reduction only where the reduction's block asks for
it with `qcompile.inline_producers`); in each remaining block the leading spatial loops are fused
and parallelized; for a reduction (conv, matmul) the innermost spatial loop is split by the
vector width and moved inside the reduction loops together with 4 (or 2) iterations of the
next spatial loop, so a 4 x vector tile of accumulators stays in registers; an elementwise block's innermost loop is vectorized. A step that a block's
structure defeats is skipped (the function stays correct). Far from tuned code, but about
cores x vector-width faster than TVM's naive serial loops.
"""
from __future__ import annotations

F32_LANES = {128: 4, 256: 8, 512: 16}


def _extent(sch, loop):
    try:
        return int(sch.get(loop).extent)
    except TypeError:
        return None


def _schedule_block(sch, block, lanes: int, local_acc: bool = True) -> None:
    from tvm.tirx import IterVar

    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if not loops:
        return
    if len(loops) != len(kinds) or any(
            k == IterVar.DataPar and prev != IterVar.DataPar
            for prev, k in zip(kinds, kinds[1:])):
        # irregular nest (or spatial loops after reductions): parallelize the outermost loop
        if kinds and kinds[0] == IterVar.DataPar:
            sch.parallel(loops[0])
        return
    n_sp = sum(1 for k in kinds if k == IterVar.DataPar)
    if n_sp == 0:
        return
    spatial, reduction = list(loops[:n_sp]), list(loops[n_sp:])
    vec, rows = None, None
    width = _vector_width(_extent(sch, spatial[-1]), lanes)
    if width:
        outer, vec = sch.split(spatial[-1], factors=[None, width])
        spatial[-1] = outer
        if reduction:
            # register blocking: ROWS accumulators of the next spatial loop share each
            # vector load of the reduction's operand, and COLS vectors of the row share each
            # broadcast (a 4 x 4 x 16 tile of outputs in registers: f32 attention.V of the
            # BERT block 330 -> ~200 us on AVX-512)
            if len(spatial) >= 2:
                r = _row_block(_extent(sch, spatial[-2]))
                if r:
                    spatial[-2], rows = sch.split(spatial[-2], factors=[None, r])
            cols = _row_block(_extent(sch, outer)) if rows is not None else None
            if cols:
                outer, cols = sch.split(outer, factors=[None, cols])
                spatial[-1] = outer
            sch.reorder(*spatial, *reduction, *([rows] if rows is not None else []),
                        *([cols] if cols else []), vec)
    par = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.parallel(par)
    if vec is None:
        return
    # vectorize while the block still carries its init (a "local reduction block"), then
    # split off the init: after decompose_reduction the update block is neither complete nor
    # a reduction block, and vectorize refuses it (as MetaSchedule's postprocessors order it)
    sch.vectorize(vec)
    if rows is not None:
        sch.unroll(rows)
        if cols:
            sch.unroll(cols)
        if local_acc:
            # accumulate the tile in a local buffer written back once per tile: LLVM keeps a
            # small constant-indexed local array in registers, a global output it reloads
            wb = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(wb, par)
            sch.vectorize(sch.get_loops(wb)[-1])
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])


def _vector_width(extent, lanes: int):
    """A divisor of `extent` to vectorize by: `lanes` if it divides, else the largest divisor
    in [lanes/2, 2*lanes] (e.g. 14 for a 28-wide row on 8-lane AVX2); None if there is none."""
    if not extent or extent < 2:
        return None
    if extent % lanes == 0:
        return lanes
    cands = [d for d in range(max(2, lanes // 2), 2 * lanes + 1) if extent % d == 0]
    return max(cands) if cands else None


def _row_block(extent):
    """How many rows (or vector columns) of outputs a reduction keeps in registers: 4 (or 2)
    when it divides -- the whole loop when it is that short (BERT's attention.V, 64 columns
    = 4 vectors: a 4 x 4 x 16 tile instead of 4 x 2 x 16, 172 -> 143 us on AVX-512)."""
    for r in (4, 2):
        if extent and extent >= r and extent % r == 0:
            return r
    return None


def _is_reduction(sch, block) -> bool:
    from tvm.tirx import IterVar

    return any(iv.iter_type != IterVar.DataPar for iv in sch.get(block).iter_vars)


def _inlines_producers(sch, block) -> bool:
    """A reduction that reads each producer element once and asks for its elementwise
    producers inlined (`qcompile.inline_producers`: the x86 regions' `spatial_sum`)."""
    return "qcompile.inline_producers" in sch.get(block).annotations


def _blocks(sch):
    """Names of the top-level blocks under the root block, in program order."""
    root = sch.get_sblock("root")
    return [sch.get(b).name_hint for b in sch.get_child_blocks(root)]


def schedule_func(func, lanes: int, name: str = "", fallbacks=None):
    import tvm
    from tvm import s_tir

    from ..fallbacks import tvm_errors
    from . import softmax_matmul

    errors = tvm_errors()
    if softmax_matmul.has_block(func):
        try:
            return softmax_matmul.schedule(func, lanes)
        except errors as err:
            if fallbacks is not None:
                fallbacks.add(name or "softmax_matmul", "softmax_matmul schedule",
                              "generic schedule", err)
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    for block_name in _blocks(sch):
        block = sch.get_sblock(block_name)
        # inline into elementwise consumers only: padding inlined into a conv's reduction
        # becomes a branch in its innermost loop
        consumers = sch.get_consumers(block)
        if any(_is_reduction(sch, c) and not _inlines_producers(sch, c) for c in consumers):
            continue
        try:
            sch.compute_inline(block)
        except errors:  # not inlinable (reduction, output, multi-consumer): keep it
            pass
    for block_name in _blocks(sch):
        # try the full recipe on a fork; keep what worked
        last = None
        for local_acc in (True, False):
            trial = sch.copy()
            try:
                _schedule_block(trial, trial.get_sblock(block_name), lanes, local_acc)
                sch = trial
                break
            except errors as err:
                last = err
                continue
        else:
            instead = "outer loop parallel, not vectorized"
            try:
                loops = sch.get_loops(sch.get_sblock(block_name))
                if loops:
                    sch.parallel(loops[0])
            except errors:
                instead = "serial"
            if fallbacks is not None:
                fallbacks.add(f"{name}:{block_name}" if name else block_name, "generic schedule",
                              instead, last)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def vector_bits(target) -> int:
    """The vector width of the target file `target` was made from (`TargetSpec.vector_bits`);
    128 (SSE) for a target that is not one of qcompile's."""
    from ..targets import spec_of

    spec = spec_of(target)
    return spec.vector_bits if spec is not None else 128


def apply(mod, target, extra=None, fallbacks=None):
    """Schedule every unscheduled PrimFunc in `mod` (see module docstring).

    `extra`: optional callable(mod, target) -> mod run first (qcompile's kernel templates'
    default schedules), so the generic rules only see what is left. `fallbacks` (a
    `qcompile.fallbacks.FallbackLog`) receives every block the recipe could not schedule and
    every function left unscheduled."""
    from tvm import tirx

    from ..fallbacks import tvm_errors

    errors = tvm_errors()
    if extra is not None:
        mod = extra(mod, target)
    lanes = F32_LANES.get(vector_bits(target), 8)
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and "tir.is_scheduled" in func.attrs and \
                bool(func.attrs["tir.is_scheduled"]):
            continue
        try:
            updates[gv] = schedule_func(func, lanes, gv.name_hint, fallbacks)
        except errors as err:
            if fallbacks is not None:
                fallbacks.add(gv.name_hint, "generic schedule", "unscheduled (serial)", err)
            continue
    for gv, f in updates.items():
        mod[gv] = f
    return mod
