"""TE computes used at the borders of, and inside, int8 regions (all injective).

* `to_nchwc` / `from_nchwc`: NCHW <-> NCHW[c]c layout transforms at region borders (their
  blocks are annotated ``qcompile.layout_transform`` so `apply_default_schedules` gives the
  stand-alone ones a parallel schedule);
* `qadd`: the quantized add of docs/integer-ir.md, with `llvm.arithmetic.fence` around both
  products: TVM's LLVM backend enables FP contraction (`AllowFPOpFusion = Fast`), which
  would otherwise turn `x * a_mult + y * b_mult` into an FMA and differ from the reference
  (each f32 operation rounded separately) by one LSB at rounding ties.
"""
from __future__ import annotations

from tvm import te, tirx

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


def _fence(v):
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", v)


def qadd(a: te.Tensor, b: te.Tensor, a_zp: int, a_mult: float, b_zp: int, b_mult: float,
         out_zp: int, out_dtype: str, clip_min: int, clip_max: int) -> te.Tensor:
    """`clip(round_half_even(f32(a - a_zp) * a_mult + f32(b - b_zp) * b_mult) + out_zp)`,
    each f32 operation rounded separately; `a` and `b` have the same shape."""
    f32 = "float32"
    am, bm = tirx.const(a_mult, f32), tirx.const(b_mult, f32)

    def fn(*idx):
        xa = (a[idx].astype("int32") - a_zp).astype(f32) * am
        xb = (b[idx].astype("int32") - b_zp).astype(f32) * bm
        r = tirx.round(_fence(xa) + _fence(xb)) + tirx.const(float(out_zp), f32)
        r = tirx.max(tirx.min(r, tirx.const(float(clip_max), f32)),
                     tirx.const(float(clip_min), f32))
        return r.astype(out_dtype)

    return te.compute(a.shape, fn, name="qadd")
