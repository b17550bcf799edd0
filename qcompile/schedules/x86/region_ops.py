"""TE computes used at the borders of, and inside, int8 regions (injective, but for the
reduction `spatial_sum`).

* `to_nchwc` / `from_nchwc`: NCHW <-> NCHW[c]c layout transforms at region borders (their
  blocks are annotated ``qcompile.layout_transform`` so `apply_default_schedules` gives the
  stand-alone ones a parallel schedule);
* `qadd` (and `requantized_qadd`, the same add taking its first operand before the
  requantize's offset and clip): the quantized add of docs/integer-ir.md, with
  `llvm.arithmetic.fence` around both products: TVM's LLVM backend enables FP contraction (`AllowFPOpFusion = Fast`), which
  would otherwise turn `x * a_mult + y * b_mult` into an FMA and differ from the reference
  (each f32 operation rounded separately) by one LSB at rounding ties;
* `requantize_tail`: the offset, clip and cast of a region requantize;
* `dequantize` / `quantize`: `relax.dequantize` / `relax.quantize` (TVM's formulas:
  `f32(x - zp) * scale`, `clip(round(x / scale) + zp)`) with their scale and zero point laid
  out as NCHW[L]c constants, so a conv's f32 epilogue (YOLOv8's SiLU: dequantize, sigmoid,
  multiply, quantize) stays in the region instead of leaving it through `from_nchwc` and
  coming back through `to_nchwc`;
* `spatial_sum`: the integer global average pool's sum over H and W (cast inside);
* `depth_to_space` (DCR, whole blocks) and `upsample_nearest` (integer factors): data
  movement that keeps the blocked layout (scheduled by `schedule.default_block_copy_schedule`
  when they are kernels of their own).

The output stages round with `llvm.lrint` (`vcvtps2dq`) after clipping (`qops.offset_clip_cast`).
"""
from __future__ import annotations

import functools

from tvm import te, tirx

from qcompile import ops as qops

LAYOUT_ATTR = "qcompile.layout_transform"
# a reduction block that reads each element of its producers once (`spatial_sum`): the
# generic schedule inlines elementwise producers into it (it keeps them out of other
# reductions, where a pad would become a branch in the inner loop or a conv would recompute)
INLINE_PRODUCERS_ATTR = "qcompile.inline_producers"
# `depth_to_space` / `upsample_nearest` (schedule.default_block_copy_schedule when it is a
# kernel of its own)
D2S_ATTR = "qcompile.depth_to_space"
UPSAMPLE_ATTR = "qcompile.upsample_nearest"


def to_nchwc(x: te.Tensor, cb: int, pad_value: int = 0) -> te.Tensor:
    n, c, h, w = (int(v) for v in x.shape)
    cc = -(-c // cb)
    return te.compute(
        (n, cc, h, w, cb),
        lambda i, o, y, z, b: tirx.if_then_else(
            o * cb + b < c, x[i, tirx.min(o * cb + b, c - 1), y, z],
            tirx.const(pad_value, x.dtype)),
        name="to_nchwc", attrs={LAYOUT_ATTR: 1})


def from_nchwc(x: te.Tensor, channels: int) -> te.Tensor:
    n, cc, h, w, cb = (int(v) for v in x.shape)
    return te.compute(
        (n, channels, h, w),
        lambda i, c, y, z: x[i, c // cb, y, z, c % cb],
        name="from_nchwc", attrs={LAYOUT_ATTR: 1})


def requantize_tail(x: te.Tensor, zp: te.Tensor, lo: te.Tensor, hi: te.Tensor,
                    dtype: str) -> te.Tensor:
    """The output stage of a region requantize: `dtype(clip(round(x) + zp, lo, hi))` of the
    f32 product `x = f32(acc) * mult`, computed with `vcvtps2dq` (`qops.offset_clip_cast`,
    exact); `zp`, `lo`, `hi` are `param_consts` tensors."""
    def fn(*i):
        return qops.offset_clip_cast(x[i], qops.scalar(zp), qops.scalar(lo), qops.scalar(hi),
                                     dtype, lrint=True)

    return te.compute(x.shape, fn, name="requantize")


# the quantized add: the same TE compute as `qcompile.qadd`'s legalization (one copy of the
# formula and its FMA fences), applied to same-shaped NCHW[L]c values, output stage on
# `vcvtps2dq`
qadd = functools.partial(qops.qadd_compute, lrint=True)
# `qadd(requantize(acc), b)` with the requantized value used only by the add (exact, fewer
# epilogue instructions: see `qops.requantized_qadd_compute`)
requantized_qadd = functools.partial(qops.requantized_qadd_compute, lrint=True)


def _lane_index(t: te.Tensor, i):
    """Index a laid-out `[1, C/L, 1, 1, L]` or `[1, 1, 1, 1, 1]` constant at NCHW[L]c `i`."""
    if int(t.shape[1]) == 1 and int(t.shape[4]) == 1:
        return t[0, 0, 0, 0, 0]
    return t[0, i[1], 0, 0, i[4]]


def dequantize(x: te.Tensor, scale: te.Tensor, zp: te.Tensor) -> te.Tensor:
    """`relax.dequantize` of an NCHW[L]c integer value: `f32(int32(x) - zp) * scale`, the
    formula of TVM's legalization (one f32 rounding, bit-identical to it)."""
    def fn(*i):
        sub = x[i].astype("int32") - _lane_index(zp, i).astype("int32")
        return sub.astype("float32") * _lane_index(scale, i)

    return te.compute(x.shape, fn, name="dequantize")


def quantize(x: te.Tensor, scale: te.Tensor, zp: te.Tensor, dtype: str) -> te.Tensor:
    """`relax.quantize` of an NCHW[L]c f32 value: `dtype(clip(round(x / scale) + zp))` over
    the dtype's range, as TVM's legalization computes it (a true division, half-even
    rounding), with the output stage on `vcvtps2dq` (`qops.offset_clip_cast`, exact)."""
    lo = tirx.const(float(tirx.min_value(dtype).value), "float32")
    hi = tirx.const(float(tirx.max_value(dtype).value), "float32")

    def fn(*i):
        zpv = _lane_index(zp, i).astype("float32")
        return qops.offset_clip_cast(x[i] / _lane_index(scale, i), zpv, lo, hi, dtype,
                                     lrint=True)

    return te.compute(x.shape, fn, name="quantize")


def spatial_sum(x: te.Tensor, dtype: str) -> te.Tensor:
    """The sum over H and W of an NCHW[L]c integer value, each element cast to `dtype`
    (int32) inside the reduction: `[N, C/L, 1, 1, L]`, the global average pool's
    `sum(int32(x))` (docs/integer-ir.md). Reading the u8 value directly, a 96 x 80 x 80 map
    is 0.6 MB instead of the 2.4 MB of a separate s32 cast (which the generic schedule does
    not inline into a reduction). Integer sums are exact in any order."""
    n, cc, h, w, cb = (int(v) for v in x.shape)
    rh = te.reduce_axis((0, h), name="rh")
    rw = te.reduce_axis((0, w), name="rw")
    return te.compute(
        (n, cc, 1, 1, cb),
        lambda i, o, _y, _z, b: te.sum(x[i, o, rh, rw, b].astype(dtype), axis=[rh, rw]),
        name="spatial_sum", attrs={INLINE_PRODUCERS_ATTR: 1})


def depth_to_space(x: te.Tensor, kh: int, kw: int) -> te.Tensor:
    """Depth-to-space in DCR order of an NCHW[L]c value with `kh*kw*O` channels, O a
    multiple of L (`relay_passes/depth_to_space.py`): output channel o at
    (y*kh + i, x*kw + j) is input channel (i*kw + j)*O + o at (y, x). An output block is one
    input block, so each output pixel copies L contiguous lanes."""
    n, cc, h, w, cb = (int(v) for v in x.shape)
    ob = cc // (kh * kw)
    return te.compute(
        (n, ob, h * kh, w * kw, cb),
        lambda b, o, y, z, lane: x[b, ((y % kh) * kw + z % kw) * ob + o, y // kh, z // kw,
                                   lane],
        name="depth_to_space", attrs={D2S_ATTR: 1})


def upsample_nearest(x: te.Tensor, ky: int, kx: int) -> te.Tensor:
    """Nearest-neighbour upsampling of an NCHW[L]c value by integer factors:
    out[.., y, x, :] = x[.., y // ky, x // kx, :] (`x86_int8_dispatch` uses it where TOPI's
    resize computes the same index through f32 coordinates per element, ~5x slower)."""
    n, cc, h, w, cb = (int(v) for v in x.shape)
    return te.compute(
        (n, cc, h * ky, w * kx, cb),
        lambda b, c, y, z, lane: x[b, c, y // ky, z // kx, lane],
        name="upsample_nearest", attrs={UPSAMPLE_ATTR: 1})
