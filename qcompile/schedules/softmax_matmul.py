"""`softmax(x) @ v` as one f32 kernel (attention's probabilities times the values), for CPUs.

Apart, the two ops are a softmax kernel that writes the whole probability tensor (BERT base:
12 x 128 x 128 f32 = 768 KiB) and a matmul kernel that reads it back. On the 2-core Ice
Lake-SP VM the matmul then ran 85 us with the probabilities in cache and ~200 us without
(measured with `cache_flush_cpu_non_first_arg`), and inside the BERT block, after the other
kernels, ~350 us per layer. OpenVINO runs the whole attention as one subgraph.

Here each parallel chunk (a few rows of one batch/head) computes its rows' softmax -- the
same stages and formulas as `vector_math.softmax_te`, so the result is bit-identical to the
two kernels -- into a buffer of a few KiB on the stack, then multiplies those rows by `v`
with a register tile (rows x up-to-4 vectors of accumulators, as the generic schedule does
for a matmul), so the probabilities never leave L1.

`softmax_matmul_te(x, v)`: x [..., M, K], v [..., K, N] (same leading dims, no broadcast),
softmax over K (a multiple of `vector_math.REDUCE_LANES`, larger than it).
`schedule(func, lanes)`: the schedule of a fused PrimFunc holding that compute (and,
possibly, elementwise producers of `x` that FuseOps put in front). Raises a TVM error when
the function is not of that form; the caller falls back to the generic schedule.
"""
from __future__ import annotations

from tvm import te

from . import vector_math

BLOCK = "softmax_matmul"
RULE = "qcompile.softmax_matmul"  # block annotation (schedule_rule) the generic pass looks for
# the softmax stages of vector_math.softmax_te over the last axis, in program order
_STAGES = ("softmax_max_part", "softmax_max", "softmax_exp", "softmax_sum_part",
           "softmax_sum", "softmax_norm")
_LANE_PARTS = ("softmax_max_part", "softmax_sum_part")
_ELEMENTWISE = ("softmax_exp", "softmax_norm")


def supported(x_shape, v_shape) -> str | None:
    """None when `softmax(x, -1) @ v` with these static shapes can be fused, else why not."""
    if x_shape is None or v_shape is None:
        return "dynamic shapes"
    if len(x_shape) < 2 or len(v_shape) != len(x_shape):
        return "ranks differ (broadcast matmul)"
    if tuple(x_shape[:-2]) != tuple(v_shape[:-2]):
        return "leading dims differ (broadcast matmul)"
    k, n = x_shape[-1], v_shape[-1]
    if v_shape[-2] != k:
        return "inner dims differ"
    lanes = vector_math.REDUCE_LANES
    if k % lanes or k <= lanes:
        return f"softmax length {k} is not a multiple of {lanes} above it"
    if n % 8:
        return f"output columns {n} are not a multiple of 8"
    return None


def _swap_last_but_one(idx):
    """(..., a, b, c) -> (..., b, a, c): the permute_dims that merges attention's heads."""
    return idx[:-3] + (idx[-2], idx[-3], idx[-1])


def softmax_matmul_te(x: te.Tensor, v: te.Tensor, out_swapped: bool = False) -> te.Tensor:
    """`softmax(x, -1) @ v`; `out_swapped`: the result in the layout [..., M, H, N] instead
    of [..., H, M, N] (the `permute_dims` that merges attention's heads back, done by the
    kernel's write-back)."""
    p = vector_math.softmax_te(x, -1)
    *lead, _m, k = x.shape
    k_axis = te.reduce_axis((0, k), "k")
    nlead = len(lead)

    def fn(*i):
        b, row, col = i[:nlead], i[nlead], i[nlead + 1]
        return te.sum(p[b + (row, k_axis)] * v[b + (k_axis, col)], axis=k_axis)

    out = te.compute(tuple(x.shape[:-1]) + (v.shape[-1],), fn, name=BLOCK,
                     attrs={"schedule_rule": RULE})
    if out_swapped:
        out = te.compute(_swap_last_but_one(tuple(out.shape)),
                         lambda *i: out[_swap_last_but_one(i)], name="out_swap")
    return out


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _tile(m: int, n_vec: int, lanes: int) -> tuple[int, int]:
    """(rows, vectors per row) of the accumulator tile: up to 4 vectors, rows so that the
    tile takes at most half the vector registers (32 zmm on AVX-512, 16 ymm on AVX2)."""
    budget = 16 if lanes >= 16 else 8
    cols = next(c for c in (4, 2, 1) if n_vec % c == 0)
    rows = next(r for r in (4, 2, 1) if m % r == 0 and r * cols <= budget)
    return rows, cols


def schedule(func, lanes: int):
    """Schedule a fused PrimFunc around its `softmax_matmul` block (see module docstring)."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    stages = [s for s in names if s in _STAGES]
    if BLOCK not in names or tuple(stages) != _STAGES:
        raise ValueError(f"not a softmax_matmul function (blocks {names})")
    last = names.index(BLOCK)
    after = names[last + 1:]
    if after not in ([], ["out_swap"]):
        raise ValueError(f"blocks after the softmax_matmul block: {after}")
    for name in names[:last]:  # elementwise producers of x (e.g. a dequantize)
        if name not in _STAGES:
            sch.compute_inline(sch.get_sblock(name))

    mm = sch.get_sblock(BLOCK)
    *lead, i, j, k = sch.get_loops(mm)
    m, n = _extent(sch, i), _extent(sch, j)
    # the output row in vectors of the target's width, or half of it (`supported` admits
    # rows that are a multiple of 8: 24 columns on AVX-512 run as 3 ymm vectors)
    vec = next((w for w in (lanes, lanes // 2) if w and n % w == 0), None)
    if vec is None:
        raise ValueError(f"{n} output columns are not a multiple of {lanes // 2} lanes")
    rows, cols = _tile(m, n // vec, vec)
    io, ii = sch.split(i, factors=[None, rows])
    jo, jv = sch.split(j, factors=[None, vec])
    jo, jc = sch.split(jo, factors=[None, cols])
    sch.reorder(*lead, io, jo, k, ii, jc, jv)
    par = sch.fuse(*lead, io)
    sch.parallel(par)
    sch.vectorize(jv)
    sch.unroll(ii)
    sch.unroll(jc)
    wb = sch.cache_write(mm, 0, "local")  # the tile stays in registers
    sch.reverse_compute_at(wb, jo)
    if after:  # the output permute_dims, written straight from the tile
        sch.reverse_compute_inline(sch.get_sblock(after[0]))
    sch.vectorize(sch.get_loops(wb)[-1])
    init = sch.decompose_reduction(mm, k)
    sch.vectorize(sch.get_loops(init)[-1])

    # the chunk's softmax rows, computed at the chunk (the buffers shrink to those rows)
    for name in reversed(_STAGES):
        sch.compute_at(sch.get_sblock(name), par)
    for name in _ELEMENTWISE:
        loops = sch.get_loops(sch.get_sblock(name))
        _, vec = sch.split(loops[-1], factors=[None, lanes])
        sch.vectorize(vec)
    for name in _LANE_PARTS:  # (rows, lane, ko) -> (rows, ko, lane): vectors along the row
        blk = sch.get_sblock(name)
        loops = sch.get_loops(blk)
        sch.reorder(loops[-1], loops[-2])
        sch.vectorize(loops[-2])
        part_init = sch.decompose_reduction(blk, loops[-1])
        sch.vectorize(sch.get_loops(part_init)[-1])
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def has_block(func) -> bool:
    """Whether a PrimFunc holds the annotated `softmax_matmul` block."""
    return RULE in str(func)
