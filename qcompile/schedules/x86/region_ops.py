"""TE computes used at the borders of, and inside, int8 regions (all injective).

* `to_nchwc` / `from_nchwc`: NCHW <-> NCHW[c]c layout transforms at region borders (their
  blocks are annotated ``qcompile.layout_transform`` so `apply_default_schedules` gives the
  stand-alone ones a parallel schedule);
* `qadd` (and `requantized_qadd`, the same add taking its first operand before the
  requantize's offset and clip): the quantized add of docs/integer-ir.md, with
  `llvm.arithmetic.fence` around both products: TVM's LLVM backend enables FP contraction (`AllowFPOpFusion = Fast`), which
  would otherwise turn `x * a_mult + y * b_mult` into an FMA and differ from the reference
  (each f32 operation rounded separately) by one LSB at rounding ties;
* `requantize_tail`: the offset, clip and cast of a region requantize.

The output stages round with `llvm.lrint` (`vcvtps2dq`) after clipping (`qops.offset_clip_cast`).
"""
from __future__ import annotations

import functools

from tvm import te, tirx

from qcompile import ops as qops

LAYOUT_ATTR = "qcompile.layout_transform"


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
