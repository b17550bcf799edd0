"""Schedules of fused PrimFuncs that contain a qcompile x86 int8 block, and their MetaSchedule
custom rules.

A fused PrimFunc (after `FuseOps`/`FuseTIR`) holds: optional injective producers (spatial
padding with the zero point, K padding, run-time packing, a fused layout transform), the
main reduction block from `compute.py` (annotated ``schedule_rule`` and
``qcompile.dot_intrin``), and the injective epilogue blocks (bias, requantize, clip,
residual add, dequantize). `schedule_fused(sch, block, tune)` schedules all of it:

* producers: inlined into each other, the last one computed at the root, parallel and
  vectorized;
* main block: tiled into a register micro-kernel (`sample_perfect_tile` knobs), reduction
  decomposed, the inner `lanes x 4` reduction tensorized with the block's intrinsic, the
  micro-kernel loops unrolled, the outer spatial loops fused and parallel;
* epilogue: intermediate blocks inlined into the output block(s), which are
  `reverse_compute_at` the tile loop (`preserve_unit_loops=True`, or trace replay fails when a
  tile is 1) and vectorized over the channel lanes, so they run inside the parallel loop on
  L1-resident accumulators.

With `tune=False` the tile decisions are fixed heuristics (the default, untuned schedule);
with `tune=True` they are sampled, which is what the MetaSchedule rules registered by
`register_rules()` (`s_tir.meta_schedule.cpu.<rule>`, picked up through the block's
``schedule_rule`` annotation by `ApplyCustomRule`) do. Every block the rule scheduled, and the
root, is then annotated ``schedule_rule = "None"`` so MetaSchedule's generic rules leave the
function alone.
"""
from __future__ import annotations

import functools
import math
import warnings

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from qcompile.fallbacks import schedule_errors, tvm_errors
from qcompile.schedules.rules import register_custom_rules

from . import compute, intrinsics, region_ops

NONE_RULE = "None"
_TVM_ERRORS = schedule_errors()
_RULE_TO_OP = {v: k for k, v in compute.RULES.items()}


# ----------------------------------------------------------------------------- helpers
def _ext(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _best_divisor(n: int, limit: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, limit))


def _num_vregs(lanes: int) -> int:
    return 32 if lanes >= 16 else 16


_ACC_BUDGET = {  # (variant, 32 vector registers?) -> accumulators of the micro-kernel
    ("vnni", True): 24, ("vnni", False): 12,
    ("fast", True): 20, ("fast", False): 10,
    ("widen16", True): 20, ("widen16", False): 8,
    ("widen", True): 16, ("widen", False): 8,
}


def _acc_budget(info: intrinsics.DotIntrin) -> int:
    """Accumulator registers of a micro-kernel: the rest hold the broadcast activations,
    the weight vectors and the widened paths' partial products (more than that spills)."""
    return _ACC_BUDGET[(info.variant, _num_vregs(info.lanes) == 32)]


def _threads() -> int:
    from qcompile.targets import default_num_threads

    return default_num_threads()


def find_main_block(sch: Schedule):
    """(block, op, intrinsic name or None) of the qcompile block in the current function."""
    for blk in _all_blocks(sch):
        ann = sch.get(blk).annotations
        rule = ann.get("schedule_rule")
        if rule is not None and str(rule) in _RULE_TO_OP:
            intrin = ann.get(compute.INTRIN_ATTR)
            return blk, _RULE_TO_OP[str(rule)], (str(intrin) if intrin is not None else None)
    return None


def _all_blocks(sch: Schedule):
    root = sch.get_sblock("root") if _has_root(sch) else None
    return sch.get_child_blocks(root) if root is not None else []


def _has_root(sch: Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except schedule_errors():  # a missing block: ScheduleError
        return False


def _block_name(sch: Schedule, blk) -> str:
    return sch.get(blk).name_hint


def _is_output(sch: Schedule, blk) -> bool:
    outs = {_block_name(sch, b) for b in sch.get_output_blocks(sch.get_sblock("root"))}
    return _block_name(sch, blk) in outs


def _root_injective(sch: Schedule, blk, threads: int) -> None:
    """Parallel + vectorized schedule of a spatial block computed at the root: the
    innermost loops are fused into one vector of up to 64 elements (the next loop split by a
    divisor when the vector would be shorter than 16), the outer loops fused and parallel until there are
    enough chunks for the threads (8 each), and the loops between stay serial, so the
    vector loop's index arithmetic is an increment instead of a division per vector (a
    NCHW16c zero-point pad fused to one parallel loop of 16-byte vectors spent ~45
    instructions on indices per vector)."""
    loops = list(sch.get_loops(blk))
    if not loops:
        return
    inner, width = [], 1
    while loops and width * _ext(sch, loops[-1]) <= 64:
        width *= _ext(sch, loops[-1])
        inner.insert(0, loops.pop())
    if loops and width < 16:  # split the next loop so the vector gets >= 16 elements
        # (not further: a wider vector across a strided dim, e.g. NCHW -> NCHW16c, is a gather)
        last = loops[-1]
        ext = _ext(sch, last)
        fit = max((d for d in _divisors(ext) if width * d <= 64), default=1)
        if fit > 1:
            loops.pop()
            outer, vloop = sch.split(last, [None, fit])
            loops.append(outer)
            inner.insert(0, vloop)
    vec_loop = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    if loops:
        par, chunks = [], 1
        while loops and chunks < 8 * threads:
            chunks *= _ext(sch, loops[0])
            par.append(loops.pop(0))
        par_loop = sch.fuse(*par) if len(par) > 1 else par[0]
        sch.parallel(par_loop)
    if _ext(sch, vec_loop) > 1:
        sch.vectorize(vec_loop)


def _split_epilogue(sch: Schedule, main):
    """Inline the injective blocks after `main`; return the remaining consumer blocks."""
    blocks = _all_blocks(sch)
    names = [_block_name(sch, b) for b in blocks]
    main_name = _block_name(sch, main)
    after = [n for n in names[names.index(main_name) + 1:]]
    remaining = []
    for name in after:
        blk = sch.get_sblock(name)
        if _is_output(sch, blk):
            remaining.append(name)
            continue
        try:
            sch.compute_inline(blk)
        except _TVM_ERRORS:  # not inlinable: keep it as its own epilogue stage
            remaining.append(name)
    return [sch.get_sblock(n) for n in remaining]


def _prologue(sch: Schedule, main, threads: int, at_root: bool = True,
              inline: bool = True) -> list:
    """Inline producer chains before `main` (unless not `inline`); schedule the direct
    producers at the root (unless not `at_root`: the op's schedule then places them
    itself). Returns the producers kept, in order."""
    blocks = _all_blocks(sch)
    names = [_block_name(sch, b) for b in blocks]
    main_name = _block_name(sch, main)
    before = names[:names.index(main_name)]
    direct = {_block_name(sch, p) for p in sch.get_producers(main)}
    kept = []
    for name in before:
        blk = sch.get_sblock(name)
        if name not in direct and inline:
            try:
                sch.compute_inline(blk)
                continue
            except _TVM_ERRORS:
                pass
        kept.append(name)
    out = []
    for name in kept:
        blk = sch.get_sblock(name)
        if at_root:
            _root_injective(sch, blk, threads)
        out.append(blk)
    return out


def _place_epilogue(sch: Schedule, epilogue, loop, main=None, threads: int = 1) -> None:
    for blk in epilogue:
        if main is not None and _broadcasts(sch, main, blk):
            # a consumer far larger than the kernel's output (the 1x1 conv of a
            # squeeze-excite gate on [N, C, 1, 1], its fused multiply over the whole feature
            # map): a parallel loop of its own over the map after the kernel, not nested in
            # the kernel's few output-channel chunks (PP-OCRv4 det's 96 x 80 x 80 gate: 3
            # chunks on 2 threads, one thread idle a third of the time)
            _root_injective(sch, blk, threads)
            continue
        sch.reverse_compute_at(blk, loop, preserve_unit_loops=True)
        _vectorize_innermost(sch, blk)


def _broadcasts(sch: Schedule, main, blk, factor: int = 8) -> bool:
    """Whether epilogue `blk` iterates over >= `factor` times the outputs of `main`."""
    from tvm.tirx import IterVar

    outs = math.prod(int(iv.dom.extent) for iv in sch.get(main).iter_vars
                     if iv.iter_type == IterVar.DataPar)
    return math.prod(_ext(sch, lp) for lp in sch.get_loops(blk)) >= factor * outs


def _tile(sch: Schedule, loop, n: int, tune: bool, decision: list[int] | None,
          max_innermost: int):
    if tune:
        factors = sch.sample_perfect_tile(loop, n, max_innermost_factor=max_innermost)
    else:
        factors = sch.sample_perfect_tile(loop, n, max_innermost_factor=max_innermost,
                                          decision=decision)
    return sch.split(loop, factors, preserve_unit_iters=True)


def _vectorize_innermost(sch: Schedule, blk) -> None:
    """Vectorize `blk`'s innermost loop when it is 2..64 long (an init, epilogue or stage)."""
    inner = sch.get_loops(blk)[-1]
    if 1 < _ext(sch, inner) <= 64:
        sch.vectorize(inner)


# ------------------------------------------------------------------- tile heuristics
def _micro_kernel(acc_budget: int, spatial: int, blocks: int, rows: int = 1,
                  max_spatial: int = 16, max_blocks: int = 4) -> tuple[int, int, int]:
    """Pick (rows_i, blocks_i, spatial_i) dividing (rows, blocks, spatial), maximizing the
    number of accumulators `rows_i * blocks_i * spatial_i <= acc_budget`, preferring more
    output-channel blocks (each broadcast activation feeds more vpdpbusd: 4x4 beat 2x8 by
    5-8% on ResNet-50's stage-1 convs, AVX-512 VNNI) and fewer rows."""
    best, key = (1, 1, 1), None
    for bi in _divisors(blocks):
        if bi > max_blocks:
            continue
        for si in _divisors(spatial):
            if si > max_spatial:
                continue
            for ri in _divisors(rows):
                if ri > 4:
                    continue
                acc = ri * bi * si
                if acc > acc_budget:
                    continue
                k = (acc, bi, -ri, si)
                if key is None or k > key:
                    best, key = (ri, bi, si), k
    return best


# ------------------------------------------------------------------------ op schedules
def _schedule_conv(sch: Schedule, main, info: intrinsics.DotIntrin, tune: bool,
                   epilogue, threads: int, tiles: dict | None = None) -> None:
    b, oc, y, x, ob, icc, kh, kw, icq, ic4 = sch.get_loops(main)
    n_oc, n_y, n_x, n_icc = (_ext(sch, v) for v in (oc, y, x, icc))
    yi, oci, xi = _micro_kernel(_acc_budget(info), n_x, n_oc, rows=n_y)
    # with a kernel window, channel blocks outside the taps (icc_i = 1): the weights
    # [OC/L, IC/c, KH, KW, ...] are then read in memory order and one input block's plane
    # stays in L1 over the taps; taps outside the channel blocks swept the weight slice KH*KW
    # times with a stride. Zen 3 (AVX2), in-model kernels, caches flushed: ResNet-50 3x3
    # 512 @7 1072 -> 787 us, 3x3 s2 512 1327 -> 1008, 256 @14 950 -> 883, others +-2%.
    icci = 1 if _ext(sch, kh) * _ext(sch, kw) > 1 else n_icc
    if tiles:
        yi, oci, xi = tiles.get("y", yi), tiles.get("oc", oci), tiles.get("x", xi)
        icci = tiles.get("icc", icci)
    oc_o, oc_i = _tile(sch, oc, 2, tune, [n_oc // oci, oci], 8)
    y_o, y_i = _tile(sch, y, 2, tune, [n_y // yi, yi], 4)
    x_o, x_i = _tile(sch, x, 2, tune, [n_x // xi, xi], 32)
    icc_o, icc_i = _tile(sch, icc, 2, tune, [n_icc // icci, icci], 64)
    sch.reorder(b, oc_o, y_o, x_o, icc_o, kh, kw, icc_i, icq, y_i, oc_i, x_i, ob, ic4)
    if _rows_outer(sch, main):
        # activations outweigh the weights (early, large-spatial layers): split the rows
        # between the threads, so each core reads the rows its own L2 holds from the
        # previous layer (which wrote them in the same order) and all of the small weight
        sch.reorder(y_o, oc_o)
        par = sch.fuse(b, y_o, oc_o)
    else:  # weights dominate: split the output channels, each core streams half of them
        par = sch.fuse(b, oc_o, y_o)
    sch.parallel(par)
    _place_epilogue(sch, epilogue, x_o, main, threads)
    init = sch.decompose_reduction(main, icc_o)
    _vectorize_innermost(sch, init)
    sch.tensorize(ob, info.name)
    for lp in (y_i, oc_i, x_i):
        sch.unroll(lp)


def _schedule_max_pool(sch: Schedule, main, epilogue) -> None:
    """Rows parallel, the window unrolled, the lanes vectorized (the pad is a root stage)."""
    b, c, y, x, lane, kh, kw = sch.get_loops(main)
    n_x = _ext(sch, x)
    xi = _best_divisor(n_x, 4)
    x_o, x_i = sch.split(x, [None, xi])
    sch.reorder(b, c, y, x_o, kh, kw, x_i, lane)
    par = sch.fuse(b, c, y)
    sch.parallel(par)
    _place_epilogue(sch, epilogue, x_o)
    sch.vectorize(lane)  # before decompose_reduction, which TVM refuses to vectorize after
    sch.unroll(x_i)
    sch.unroll(kw)
    init = sch.decompose_reduction(main, kh)
    _vectorize_innermost(sch, init)


def _buffer_bytes(buf) -> int:
    n = 1
    for d in buf.shape:
        n *= int(d)
    return n * tvm.runtime.DataType(buf.dtype).bits // 8


def _rows_outer(sch: Schedule, main) -> bool:
    """Whether the conv's data (read region of its first input) is larger than its weight."""
    blk = sch.get(main)
    data, weight = blk.reads[0].source, blk.reads[1].source
    return _buffer_bytes(data) >= _buffer_bytes(weight)


def _depthwise_band(n_c: int, n_y: int, threads: int, row_bytes: int, stride: int, kh: int,
                    max_rows: int = 8, max_bytes: int = 128 * 1024) -> int:
    """Output rows per parallel chunk of the depthwise template: the most rows (<= max_rows,
    dividing n_y) whose padded s32 input rows fit `max_bytes` (the chunk's stage stays in
    L2) and that still leave >= 4 chunks per thread."""
    for rows in sorted((d for d in _divisors(n_y) if d <= max_rows), reverse=True):
        in_rows = (rows - 1) * stride + kh
        if n_c * (n_y // rows) >= 4 * threads and in_rows * row_bytes <= max_bytes:
            return rows
    return 1


def _schedule_depthwise(sch: Schedule, main, info, tune: bool, epilogue, threads: int,
                        producers: list, tiles: dict | None = None) -> None:
    """Depthwise template: chunks of (channel block, band of output rows) run in parallel;
    each chunk first pads and zero-extends the input rows its band reads (the producer
    stage, computed at the chunk, so it stays in L1/L2 instead of being a pass over the
    whole tensor), then for each run of `xi` outputs keeps `xi` s32 accumulators in
    registers and does one `info` multiply-accumulate per tap (kw and x unrolled)."""
    b, c, y, x, lane, kh, kw = sch.get_loops(main)
    n_c, n_x, n_y = _ext(sch, c), _ext(sch, x), _ext(sch, y)
    xi = _best_divisor(n_x, 8)
    # the stage's padded s32 input [N, C/L, PH, PW, L]: bytes per row of one channel block,
    # and the row stride estimated from the shapes (a heuristic: only sizes the band)
    row_bytes, stride, n_kh = 0, 1, _ext(sch, kh)
    if producers:
        pad = sch.get(producers[0]).writes[0].source
        ph = int(pad.shape[2])
        row_bytes = _buffer_bytes(pad) // (int(pad.shape[0]) * int(pad.shape[1]) * ph)
        stride = max(1, (ph - n_kh) // max(1, n_y - 1))
    yb = _depthwise_band(n_c, n_y, threads, row_bytes, stride, n_kh)
    if tiles:
        xi, yb = tiles.get("x", xi), tiles.get("y", yb)
    y_o, y_i = _tile(sch, y, 2, tune, [n_y // yb, yb], 8)
    x_o, x_i = _tile(sch, x, 2, tune, [n_x // xi, xi], 16)
    sch.reorder(b, c, y_o, y_i, x_o, kh, kw, x_i, lane)
    par = sch.fuse(b, c, y_o)
    sch.parallel(par)
    for blk in producers:
        sch.compute_at(blk, par, preserve_unit_loops=True)
        _vectorize_innermost(sch, blk)
    _place_epilogue(sch, epilogue, x_o)
    sch.unroll(x_i)
    sch.unroll(kw)
    init = sch.decompose_reduction(main, kh)
    _vectorize_innermost(sch, init)
    sch.tensorize(sch.get_loops(main)[-1], info.name)


def _schedule_matmul(sch: Schedule, main, info: intrinsics.DotIntrin, tune: bool, epilogue,
                     threads: int, tiles: dict | None = None) -> None:
    loops = sch.get_loops(main)
    # leading dims (batch, or a dense's extra activation dims) go to the parallel loop;
    # only the last row dim is tiled (fusing rows first would break blockize's affine maps)
    spatial, (j, kq, k4) = loops[:-3], loops[-3:]
    batch, i = spatial[:-1], spatial[-1]
    bt = (sch.fuse(*batch) if len(batch) > 1 else batch[0]) if batch else None
    lanes = info.lanes
    n_i, n_j, n_kq = _ext(sch, i), _ext(sch, j) // lanes, _ext(sch, kq)
    ii, ji, _ = _micro_kernel(_acc_budget(info), 1, n_j, rows=n_i, max_blocks=4)
    kqi = n_kq
    if tiles:
        ii, ji, kqi = tiles.get("i", ii), tiles.get("j", ji), tiles.get("kq", kqi)
    jb, lane_loop = sch.split(j, [None, lanes])
    jb_o, jb_i = _tile(sch, jb, 2, tune, [n_j // ji, ji], 8)
    i_o, i_i = _tile(sch, i, 2, tune, [n_i // ii, ii], 8)
    kq_o, kq_i = _tile(sch, kq, 2, tune, [n_kq // kqi, kqi], 256)
    # keep the larger operand's tile resident: with more weight than activation rows (a
    # dense layer's [K, N] weight vs a few rows), sweep all rows for each column block
    weight_elems, act_elems = n_j * lanes * n_kq * 4, n_i * n_kq * 4
    cols_outer = weight_elems >= act_elems
    if tiles and "cols_outer" in tiles:
        cols_outer = bool(tiles["cols_outer"])
    outer = ([bt] if bt is not None else []) + ([jb_o, i_o] if cols_outer else [i_o, jb_o])
    sch.reorder(*outer, kq_o, kq_i, i_i, jb_i, lane_loop, k4)
    par = sch.fuse(*outer)
    sch.parallel(par)
    _place_epilogue(sch, epilogue, par)
    init = sch.decompose_reduction(main, kq_o)
    _vectorize_innermost(sch, init)
    sch.tensorize(lane_loop, info.name)
    sch.unroll(i_i)
    sch.unroll(jb_i)


def _winograd_tile(n_oc: int, n_tx: int, vregs: int) -> tuple[int, int]:
    """(oc_i, tx_i) of the Winograd GEMM's register tile: 2 output-channel blocks (4 with 32
    registers) by a run of 4 tiles, or 7 (or the largest divisor <= 7) when 4 does not
    divide the tile row. Measured on Zen 3 (AVX2, 2 threads, interleaved): 2 x 4 beat 4 x 2,
    8 x 1 and 3 x 4 (e.g. 64->64 @56: 641 vs 789 / 900 / 1293 us); on a 7-tile row 2 x 7
    (14 accumulators, a few spilled) beat 1 x 7 and 2 x 1 (256->256 @14: 645 vs 716 / 900 us).
    Re-checked with the position-major input (ResNet-50 NNCF layers, medians of 30
    alternations): 4 x 2, 1 x 7, 2 x 2 and 8 x 1 within 0.98-1.30x of the default, none
    clearly faster."""
    want = 4 if vregs >= 32 else 2
    oci = _best_divisor(n_oc, want)
    txi = 4 if n_tx % 4 == 0 else _best_divisor(n_tx, 7)
    return oci, txi


def _winograd_chunks(n_ty: int, n_occ: int, threads: int, oci: int) -> tuple[int, int]:
    """(band, groups): a parallel chunk computes `band` rows of 2x2 tiles for one of `groups`
    output-channel groups. One tile row and all channels per chunk (its transformed input
    is computed once, in L1/L2, and each position's weights stream once per row), split
    into channel groups only when there are fewer than 2 rows per thread. Measured against
    band = all rows with 8-32 groups (weights read once per call): 0.89-0.95x the time on
    ResNet-50's 3x3 layers (Zen 3, 2 threads, alternating A/B)."""
    groups = next((g for g in _divisors(n_occ // oci) if n_ty * g >= 2 * threads),
                  n_occ // oci)
    return 1, groups


def _schedule_winograd(sch: Schedule, main, info: intrinsics.DotIntrin, tune: bool, epilogue,
                       threads: int, producers: list, tiles: dict | None = None) -> None:
    """Winograd F(2x2, 3x3) (`winograd.py`), scheduled from its output. Chunks of (`band`
    rows of 2x2 tiles, output-channel group) run in parallel (`_winograd_chunks`). A chunk
    computes, for each of the 16 positions and each `oc_i` channel blocks, the GEMM over the
    input channels for all its tiles, `tx_i x oc_i` s32 accumulators at a time in registers
    (`widen16`: `vpmaddwd`), so the position's weights stay in L1 across the tiles; then the
    output transform and the fused epilogue run on its outputs. The input transform is
    computed per chunk when there is one channel group, else once at the root. (The output
    indexes the GEMM by y // 2, which `reverse_compute_at` cannot invert: the GEMM is
    computed at the output's chunk loop instead.)"""
    if len(epilogue) != 1:
        raise ValueError(f"winograd: {len(epilogue)} output blocks (expects one)")
    out = epilogue[0]
    pad, vstage = producers
    _, oc, ty, tx = sch.get_loops(main)[:4]
    n_oc, n_ty, n_tx = _ext(sch, oc), _ext(sch, ty), _ext(sch, tx)
    oci, txi = _winograd_tile(n_oc, n_tx, _num_vregs(info.lanes))
    band, og = _winograd_chunks(n_ty, n_oc, threads, oci)
    if tiles:
        oci, txi = tiles.get("oc", oci), tiles.get("x", txi)
        band, og = tiles.get("band", band), tiles.get("groups", og)
    b, c, y, x, lane = sch.get_loops(out)
    y_t, y_i = sch.split(y, [None, 2])
    x_o, x_i = sch.split(x, [None, 2])
    y_o, y_m = _tile(sch, y_t, 2, tune, [n_ty // band, band], 16)
    c_o, c_i = _tile(sch, c, 2, tune, [og, n_oc // og], 64)
    sch.reorder(b, y_o, c_o, y_m, x_o, c_i, y_i, x_i, lane)
    par = sch.fuse(b, y_o, c_o)
    sch.parallel(par)
    sch.vectorize(lane)
    for lp in (y_i, x_i):
        sch.unroll(lp)
    sch.compute_at(main, par, preserve_unit_loops=True)
    one_group = _ext(sch, sch.get_loops(main)[-9]) == n_oc
    if one_group:
        sch.compute_at(vstage, par, preserve_unit_loops=True)
    # the transform per tile and channel block: its 16 positions unrolled (the selects
    # fold, the 16 loads are shared), the channels vectorized
    v_b, v_xi, v_nu, v_ty, v_tx, v_c, v_ch = sch.get_loops(vstage)[-7:]
    sch.reorder(v_b, v_ty, v_tx, v_c, v_xi, v_nu, v_ch)
    if not one_group:
        sch.parallel(sch.fuse(v_b, v_ty))
    sch.unroll(v_xi)
    sch.unroll(v_nu)
    sch.vectorize(v_ch)
    g_oc, g_ty, g_tx, g_xi, g_nu, g_ob, g_icc, g_icq, g_ic4 = sch.get_loops(main)[-9:]
    oc_m, oc_i = _tile(sch, g_oc, 2, tune, [_ext(sch, g_oc) // oci, oci], 8)
    tx_o, tx_i = _tile(sch, g_tx, 2, tune, [n_tx // txi, txi], 8)
    sch.reorder(g_xi, g_nu, oc_m, g_ty, tx_o, g_icc, g_icq, tx_i, oc_i, g_ob, g_ic4)
    init = sch.decompose_reduction(main, g_icc)
    _vectorize_innermost(sch, init)
    sch.tensorize(g_ob, info.name)
    for lp in (tx_i, oc_i):
        sch.unroll(lp)
    _root_injective(sch, pad, threads)


# --------------------------------------------------------------------------- entry points
def schedule_fused(sch: Schedule, block=None, tune: bool = False,
                   tiles: dict | None = None) -> Schedule:
    """Schedule the whole fused PrimFunc that `sch` works on around its qcompile block.
    `tiles` overrides default tile decisions (conv: y, oc, x, icc; matmul: i, j, kq;
    depthwise: x, y; winograd: oc, x, band, groups)."""
    found = find_main_block(sch)
    if found is None:
        raise ValueError("no qcompile int8 block (schedule_rule annotation) in this function")
    main, op, intrin = found
    threads = _threads()
    producers = _prologue(sch, main, threads, at_root=op not in ("depthwise", "winograd"),
                          inline=op != "winograd")
    epilogue = _split_epilogue(sch, main)
    if op == "conv2d":
        _schedule_conv(sch, main, intrinsics.by_name(intrin), tune, epilogue, threads, tiles)
    elif op == "depthwise":
        _schedule_depthwise(sch, main, intrinsics.by_name(intrin), tune, epilogue, threads,
                            producers, tiles)
    elif op == "winograd":
        _schedule_winograd(sch, main, intrinsics.by_name(intrin), tune, epilogue, threads,
                           producers, tiles)
    elif op == "max_pool":
        _schedule_max_pool(sch, main, epilogue)
    elif op in ("dense", "batch_matmul"):
        _schedule_matmul(sch, main, intrinsics.by_name(intrin), tune, epilogue, threads, tiles)
    else:  # pragma: no cover
        raise ValueError(op)
    # keep MetaSchedule's generic rules (AutoInline, MultiLevelTiling, the root's
    # ParallelizeVectorizeUnroll, ...) off this function: it is fully scheduled
    for blk in _all_blocks(sch) + [sch.get_sblock("root")]:
        sch.annotate(blk, "schedule_rule", NONE_RULE)
    return sch


def _rule(sch: Schedule, block) -> list[Schedule]:
    schedule_fused(sch, block, tune=True)
    return [sch]


@functools.lru_cache(maxsize=None)
def register_rules() -> tuple[str, ...]:
    """Register the MetaSchedule custom rules `s_tir.meta_schedule.cpu.<rule>` and the
    intrinsics they tensorize with (also needed before opening a tuning database)."""
    intrinsics.register_all()
    return register_custom_rules("cpu", compute.RULES.values(), _rule)


def has_qcompile_block(func) -> bool:
    """Whether a PrimFunc holds a block annotated with one of our schedule rules."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    if not any(rule in str(func) for rule in _RULE_TO_OP):
        return False
    return find_main_block(Schedule(tvm.IRModule({"main": func}))) is not None


def default_schedule(func: tirx.PrimFunc, tiles: dict | None = None) -> tirx.PrimFunc:
    """The deterministic default schedule of one fused PrimFunc (marked scheduled)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    schedule_fused(sch, tune=False, tiles=tiles)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def _is_layout_transform(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and region_ops.LAYOUT_ATTR in str(func)


def default_injective_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Parallel + vectorized schedule for a PrimFunc of spatial blocks (layout transforms)."""
    rows = _producers_at_rows(func)
    if rows is not None:
        return rows.with_attr("tir.is_scheduled", True)
    sch = Schedule(tvm.IRModule({"main": func}))
    threads = _threads()
    for blk in _all_blocks(sch)[:-1]:  # fused producers (e.g. the input quantize): inline
        try:
            sch.compute_inline(blk)
        except _TVM_ERRORS:
            pass
    for blk in _all_blocks(sch):
        _root_injective(sch, blk, threads)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


_BLOCK_COPIES = ("depth_to_space", "upsample_nearest")


def _is_block_copy(func) -> bool:
    """A PrimFunc whose last block is a `depth_to_space` / `upsample_nearest` (the others,
    if any, its producers)."""
    if not (isinstance(func, tirx.PrimFunc) and (
            region_ops.D2S_ATTR in str(func) or region_ops.UPSAMPLE_ATTR in str(func))):
        return False
    sch = Schedule(tvm.IRModule({"main": func}))
    blocks = _all_blocks(sch)
    return bool(blocks) and _block_name(sch, blocks[-1]) in _BLOCK_COPIES \
        and not sch.get_consumers(blocks[-1])


def default_block_copy_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`region_ops.depth_to_space` / `upsample_nearest`: output rows and columns split by
    the factors (kh, kw), so each input index is the loop variables themselves (no
    division per element), the L lanes of a pixel one vector copy, rows of all channel
    blocks parallel; fused producers computed before it at the root. As a generic
    injective loop (one parallel loop over pixels, the indices divided out per vector)
    PP-OCRv4 det's 96 x 80 x 80 -> 24 x 160 x 160 u8 depth-to-space took ~200 us. Where a
    step does not apply (a producer that is not injective) TVM's error propagates, and
    `apply_default_schedules` leaves the function to the generic schedule and records it in
    `fallbacks`, as for the other templates."""
    sch = Schedule(tvm.IRModule({"main": func}))
    *producers, blk = _all_blocks(sch)
    # producers (the quantize before an upsampling) at the root over their own, smaller
    # shape: inlined, an upsampling by k x k computed each of their elements k*k times
    for p in producers:
        _root_injective(sch, p, _threads())
    b, o, y, z, lane = sch.get_loops(blk)
    buf_in = sch.get(blk).reads[0].source
    kh = _ext(sch, y) // int(buf_in.shape[2])
    kw = _ext(sch, z) // int(buf_in.shape[3])
    yo, yi = sch.split(y, [None, kh])
    zo, zi = sch.split(z, [None, kw])
    sch.reorder(b, o, yo, yi, zo, zi, lane)
    sch.parallel(sch.fuse(b, o, yo))
    sch.unroll(zi)
    sch.vectorize(lane)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def _producers_at_rows(func: tirx.PrimFunc):
    """The layout transform scheduled as by `_root_injective`, its fused producers (e.g. the
    model's input quantize before NCHW -> NCHW4c) computed per parallel chunk in their own
    layout, vectorized along their contiguous innermost axis, instead of inlined into the
    transposed (gathering) vector loop: the ResNet-50 input quantize + NCHW4c went from 272
    to 70 us (Ice Lake-SP, 2 threads). None when there is no producer, a primitive does not
    apply, or a chunk would compute more producer elements than the transform consumes
    (a producer in the blocked layout would be recomputed per channel)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    blocks = _all_blocks(sch)
    if len(blocks) < 2:
        return None
    last = blocks[-1]
    try:
        _root_injective(sch, last, _threads())
        loops = sch.get_loops(last)
        if not loops or sch.get(loops[0]).kind != tirx.ForKind.PARALLEL:
            return None
        par = loops[0]
        consumed = math.prod(_ext(sch, lp) for lp in loops[1:])
        for blk in reversed(blocks[:-1]):
            sch.compute_at(blk, par)
        for blk in blocks[:-1]:
            inner = sch.get_loops(blk)[1:]
            if math.prod(_ext(sch, lp) for lp in inner) > consumed:
                return None
            if inner and _ext(sch, inner[-1]) > 1:
                _vectorize_capped(sch, inner[-1])
    except _TVM_ERRORS:
        return None
    return sch.mod["main"]


MAX_VECTOR_LANES = 64


def _vectorize_capped(sch: Schedule, loop) -> None:
    """Vectorize `loop`, split first when it is longer than MAX_VECTOR_LANES: LLVM takes
    minutes on a 512-lane vector of a transposing (gathering) stage (magika's LayerNorm +
    transpose + quantize kernel: 58 s of an 84 s build) and splits it into zmm ops anyway."""
    n = _ext(sch, loop)
    if n <= MAX_VECTOR_LANES:
        sch.vectorize(loop)
        return
    lanes = _best_divisor(n, MAX_VECTOR_LANES)
    if lanes > 1:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def apply_default_schedules(mod: tvm.IRModule, spec=None, strict: bool = False,
                            fallbacks=None) -> tvm.IRModule:
    """Schedule every not yet scheduled PrimFunc of `mod` that contains a qcompile int8
    block (the untuned build), and give the stand-alone region-border layout transforms a
    parallel schedule. `spec` is accepted for symmetry with the dispatch: each block records
    its tensor intrinsic, so it is not needed here. A function whose structure the schedule
    does not expect is left to the generic scheduler (correct, slower) with a warning and
    an entry in `fallbacks` (a `qcompile.fallbacks.FallbackLog`), or raises when `strict`."""
    intrinsics.register_all()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or (
                func.attrs and func.attrs.get("tir.is_scheduled")):
            continue
        try:
            if has_qcompile_block(func):
                updates[gv] = default_schedule(func)
            elif _is_layout_transform(func):
                updates[gv] = default_injective_schedule(func)
            elif _is_block_copy(func):
                updates[gv] = default_block_copy_schedule(func)
        except tvm_errors() as err:
            if strict:
                raise
            warnings.warn(f"qcompile: no x86 int8 schedule for {gv.name_hint} "
                          f"(generic schedule instead): {str(err).splitlines()[-1]}",
                          stacklevel=2)
            if fallbacks is not None:
                fallbacks.add(gv.name_hint, "x86 int8 template schedule",
                              "generic schedule (no dot-product tiling)", err)
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod.update_func(gv, func)
    return mod
