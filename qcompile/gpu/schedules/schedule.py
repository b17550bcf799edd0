"""GPU schedules of fused PrimFuncs that hold an OpenCL int8 compute (`compute.py`).

Expects: a PrimFunc after FuseTIR with one main block annotated ``schedule_rule`` =
`compute.RULES[...]`, its in-function repacking stages (annotated `compute.PACK_ATTR`) or a
padding stage before it, and injective epilogue blocks after it (bias, requantize, clip,
residual add, ...).

Guarantees (`schedule_fused`):
* every output axis of the main block is tiled three ways: work-group, work-item, register
  tile (axes with batch role only to work-groups); the work-group loops are fused and bound to
  `blockIdx.x`, the work-item loops to `threadIdx.x` (the last, contiguous output axis
  fastest); the outer reduction axis is split in two;
* loop order inside a work-item: reductions, then the register tile, then the 4-lane axis,
  which is tensorized with DOT4 (`intrinsics`); the accumulators live in registers (`local`)
  and are initialized by a decomposed init block;
* the epilogue is inlined into one block computed at the work-item (from the registers
  straight to the output); if that is impossible (an epilogue that reshapes), the
  accumulators go to a global scratch buffer and the epilogue becomes its own kernel;
* repacking stages are kernels of their own (work-item per element); a padding stage is
  inlined into the main block's loads (depthwise only: it has no DOT4).

Default tiles come from `_default_tiles` (a fixed heuristic under the target's
`max_threads_per_block`); the MetaSchedule rules `s_tir.meta_schedule.opencl.<rule>`
(`register_rules`) sample them with `sample_perfect_tile` and sample the unroll depth, so
`qcompile tune --target intel-gpu` searches exactly this space. Every block of a function the
rule scheduled is then annotated ``schedule_rule = "None"`` so MetaSchedule's generic rules
leave it alone.
"""
from __future__ import annotations

import functools

from ...fallbacks import schedule_errors, tvm_errors
from . import compute, intrinsics

NONE_RULE = "None"
UNROLL_STEPS = (0, 16, 64, 256)
DEFAULT_UNROLL = 64


class _ScheduleError(Exception):
    """This module's own refusal: a function whose structure the templates do not expect."""


# model.json `fallbacks` entry of a function whose template could not be scheduled
STAGE = "opencl int8 template schedule"
INSTEAD = "dlight GPU rules (generic s32 kernel, no DOT4 tiling)"


def _route_errors() -> tuple[type[BaseException], ...]:
    """What one schedule route may raise when it refuses: a TVM primitive (ScheduleError,
    InternalError, the ValueError of TVM's Python wrappers) or this module's structural
    checks. Anything else is a bug in the schedule and propagates."""
    return (*tvm_errors(), _ScheduleError)


def _ext(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _best_div(n: int, limit: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, limit))


def _blocks(sch):
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def _name(sch, blk) -> str:
    return str(sch.get(blk).name_hint)


def _ann(sch, blk) -> dict:
    return dict(sch.get(blk).annotations)


def find_main_block(sch):
    """(block, op kind) of the function's int8 main block, or (None, None)."""
    kinds = {v: k for k, v in compute.RULES.items()}
    for blk in _blocks(sch):
        rule = _ann(sch, blk).get("schedule_rule")
        if rule is not None and str(rule) in kinds:
            return blk, kinds[str(rule)]
    return None, None


def _param_buffers(sch):
    func = sch.mod["main"]
    return [p for p in func.params]


def _region_buffer(region):
    """The buffer of a block read/write region (TVM 0.27: `TensorRegion.source`)."""
    buf = getattr(region, "buffer", None)
    return buf if buf is not None else region.source


def _is_output(sch, blk) -> bool:
    params = _param_buffers(sch)
    for region in sch.get(blk).writes:
        buf = _region_buffer(region)
        if any(buf.same_as(p) or str(buf.name) == str(p.name) for p in params):
            return True
    return False


# ------------------------------------------------------------------------ structure
def _roles(kind: str, nloops: int):
    """Per main-block loop: 'batch' | 'spatial' | 'rsplit' | 'reduce' | 'lane'."""
    if kind == "conv2d":        # n, oc, oh, ow, rc, ry, rx, ri
        return ["batch", "spatial", "spatial", "spatial", "rsplit", "reduce", "reduce", "lane"]
    if kind == "depthwise":     # n, c, oh, ow, ry, rx
        return ["batch", "spatial", "spatial", "spatial", "reduce", "reduce"]
    if kind in ("dense", "batch_matmul"):  # ..., m, n, ko, ki
        return ["batch"] * (nloops - 4) + ["spatial", "spatial", "rsplit", "lane"]
    raise _ScheduleError(kind)


# (max register tile, max work-items) per spatial axis, outermost first
_TILE_LIMITS = {
    "conv2d": [(4, 8), (1, 4), (2, 16)],
    "depthwise": [(1, 4), (1, 4), (4, 16)],
    "dense": [(4, 16), (4, 16)],
    "batch_matmul": [(2, 8), (4, 32)],   # (m, n)
}


def _default_tiles(kind: str, extents: list[int], max_threads: int) -> list[list[int]]:
    """[work-group, work-item, register] factors for each spatial axis (product = extent)."""
    limits = _TILE_LIMITS[kind]
    tiles = [[e, 1, 1] for e in extents]
    budget = max_threads
    # the innermost (contiguous) axis gets its threads first
    for i in reversed(range(len(extents))):
        reg_lim, thr_lim = limits[i] if i < len(limits) else (1, 1)
        e = extents[i]
        reg = _best_div(e, reg_lim)
        thr = _best_div(e // reg, min(thr_lim, budget))
        budget //= thr
        tiles[i] = [e // (reg * thr), thr, reg]
    return tiles


# ----------------------------------------------------------------------------- schedule
def _bind_elementwise(sch, blk, max_threads: int) -> None:
    loops = sch.get_loops(blk)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _ext(sch, fused)
    bx, tx = sch.split(fused, [None, min(max_threads, ext)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _tile_main(sch, main, kind, tune: bool, max_threads: int):
    """Tile and bind the main block; returns (thread loop, reduction outer loop, lane loop,
    register-tile loops)."""
    loops = sch.get_loops(main)
    roles = _roles(kind, len(loops))
    if len(loops) != len(roles):
        raise _ScheduleError(f"{kind}: main block has {len(loops)} loops, expected "
                             f"{len(roles)}")
    spatial = [l for l, r in zip(loops, roles) if r == "spatial"]
    extents = [_ext(sch, l) for l in spatial]
    defaults = _default_tiles(kind, extents, max_threads)
    blocks_, threads, regs = [], [], []
    for l, r in zip(loops, roles):
        if r == "batch":
            blocks_.append(l)
    for l, d in zip(spatial, defaults):
        if tune:
            factors = sch.sample_perfect_tile(l, n=3, max_innermost_factor=8)
        else:
            factors = d
        b, t, i = sch.split(l, factors, preserve_unit_iters=True)
        blocks_.append(b)
        threads.append(t)
        regs.append(i)
    rsplit = [l for l, r in zip(loops, roles) if r == "rsplit"]
    reduce_rest = [l for l, r in zip(loops, roles) if r == "reduce"]
    lane = [l for l, r in zip(loops, roles) if r == "lane"]
    red = []
    if rsplit:
        l = rsplit[0]
        if tune:
            factors = sch.sample_perfect_tile(l, n=2, max_innermost_factor=16)
        else:
            factors = [_ext(sch, l), 1]
        ro, ri = sch.split(l, factors, preserve_unit_iters=True)
        red = [ro, ri]
    red += reduce_rest
    sch.reorder(*blocks_, *threads, *red, *regs, *lane)
    bx = sch.fuse(*blocks_, preserve_unit_iters=True) if len(blocks_) > 1 else blocks_[0]
    tx = sch.fuse(*threads, preserve_unit_iters=True) if len(threads) > 1 else threads[0]
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    if tune:
        step = sch.sample_categorical(list(UNROLL_STEPS), [1.0 / len(UNROLL_STEPS)]
                                      * len(UNROLL_STEPS))
    else:
        step = DEFAULT_UNROLL
    sch.annotate(bx, "pragma_auto_unroll_max_step", step)
    sch.annotate(bx, "pragma_unroll_explicit", 1)
    return tx, (red[0] if red else None), (lane[0] if lane else None)


def _prepare(sch, main, kind):
    """Inline padding stages into the main block and all epilogue blocks but the outputs;
    returns (pack blocks, output epilogue blocks)."""
    blocks = _blocks(sch)
    names = [_name(sch, b) for b in blocks]
    mi = names.index(_name(sch, main))
    packs = []
    for b in blocks[:mi]:
        if compute.PACK_ATTR in _ann(sch, b):
            packs.append(b)
        else:
            sch.compute_inline(b)
    outs = []
    for b in blocks[mi + 1:]:
        if _is_output(sch, b):
            outs.append(b)
        else:
            sch.compute_inline(b)
    return packs, outs


def _lane_intrin(sch, main) -> str:
    reads = sch.get(main).reads
    scopes = []
    for region in reads[-2:]:
        scope = str(getattr(_region_buffer(region).ty, "storage_scope", "global") or "global")
        scopes.append(scope if scope in intrinsics.SCOPES else "global")
    while len(scopes) < 2:
        scopes.append("global")
    return intrinsics.intrin_name(*scopes)


def _finish_main(sch, main, tx, rloop, lane) -> None:
    if rloop is not None:
        sch.decompose_reduction(main, rloop)
    if lane is not None:
        sch.tensorize(lane, _lane_intrin(sch, main))


def _route_fused(sch, main, kind, outs, tune, max_threads):
    """Accumulate in registers and run the epilogue from them, in the same kernel."""
    if len(outs) != 1 or outs[0] is None:
        raise _ScheduleError("needs exactly one epilogue output block")
    sch.set_scope(main, 0, "local")
    tx, rloop, lane = _tile_main(sch, main, kind, tune, max_threads)
    sch.reverse_compute_at(outs[0], tx, preserve_unit_loops=True)
    _finish_main(sch, main, tx, rloop, lane)


def _route_separate(sch, main, kind, outs, tune, max_threads):
    """Accumulate in registers, write the s32 result to global; epilogue as its own kernel."""
    wb = sch.cache_write(main, 0, "local")
    tx, rloop, lane = _tile_main(sch, main, kind, tune, max_threads)
    sch.reverse_compute_at(wb, tx, preserve_unit_loops=True)
    for o in outs:
        if not sch.get(o).same_as(sch.get(main)):
            _bind_elementwise(sch, o, max_threads)
    _finish_main(sch, main, tx, rloop, lane)


def _max_threads(sch) -> int:
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is not None:
        for key in ("max_threads_per_block", "max_num_threads"):
            v = tgt.attrs.get(key) if hasattr(tgt, "attrs") else None
            if v is not None:
                return int(v)
    return 256


def schedule_fused(sch, block=None, tune: bool = False, max_threads: int | None = None):
    """Schedule a fused PrimFunc holding an OpenCL int8 compute (see module doc)."""
    intrinsics.register()
    max_threads = max_threads or _max_threads(sch)
    main, kind = find_main_block(sch)
    if main is None:
        raise _ScheduleError("no qcompile OpenCL int8 block in this function")
    errors = []
    for route in ("fused", "separate"):
        trial = sch.copy()
        try:
            tmain, _ = find_main_block(trial)
            packs, outs = _prepare(trial, tmain, kind)
            if route == "fused":
                _route_fused(trial, tmain, kind, outs, tune, max_threads)
            else:
                _route_separate(trial, tmain, kind, outs, tune, max_threads)
            for p in packs:
                _bind_elementwise(trial, p, max_threads)
            for blk in _blocks(trial):
                trial.annotate(blk, "schedule_rule", NONE_RULE)
            return trial
        # only schedule refusals (see _route_errors): a route that TVM or the template
        # refuses falls to the next one; if all refuse, every route's reason (the last line
        # of TVM's message) reaches the caller and model.json `fallbacks`
        except _route_errors() as err:
            last = (str(err).strip().splitlines() or [""])[-1].strip()
            last = last.removeprefix("Error message: ")[-300:]
            errors.append(f"{route}: {type(err).__name__}: {last}")
    raise _ScheduleError("cannot schedule the int8 kernel: " + " | ".join(errors))


def _rule(sch, block):
    # a tuning candidate the template cannot schedule stays unscheduled here; the build's
    # default schedule (`apply_default_schedules`) records the same failure as a fallback
    try:
        return [schedule_fused(sch, block, tune=True)]
    except _ScheduleError:
        return [sch]


@functools.lru_cache(maxsize=None)
def register_rules() -> tuple[str, ...]:
    """Register `s_tir.meta_schedule.opencl.<rule>` for every template (idempotent)."""
    from ...schedules.rules import register_custom_rules

    intrinsics.register()
    return register_custom_rules("opencl", compute.RULES.values(), _rule)


def has_int8_block(func) -> bool:
    import tvm
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        return find_main_block(sch)[0] is not None
    # a function without schedulable blocks (no "root" block): TVM's ScheduleError; such a
    # function holds no template block by construction
    except schedule_errors():
        return False


def default_schedule(func, max_threads: int = 256):
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    sch = schedule_fused(sch, tune=False, max_threads=max_threads)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])


def apply_default_schedules(mod, target, fallbacks=None):
    """Schedule every not-yet-scheduled PrimFunc holding an int8 template (default tiles).
    A function whose template cannot be scheduled is left to the generic GPU rules (still
    exact: plain s32 arithmetic) with an entry in `fallbacks` (a
    `qcompile.fallbacks.FallbackLog`: kernel, `STAGE`, `INSTEAD`, reason); without a log
    the error propagates, so a failure is never dropped."""
    from tvm import tirx

    max_threads = int(target.attrs.get("max_threads_per_block", 256)) \
        if hasattr(target, "attrs") else 256
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        if not has_int8_block(func):
            continue
        try:
            updates[gv] = default_schedule(func, max_threads)
        except _ScheduleError as err:  # every route refused (schedule_fused)
            if fallbacks is None:
                raise
            fallbacks.add(gv.name_hint, STAGE, INSTEAD, err)
    for gv, f in updates.items():
        mod[gv] = f
    return mod
