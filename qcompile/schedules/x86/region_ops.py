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


def qadd(a: te.Tensor, b: te.Tensor, *params_and_dtype) -> te.Tensor:
    """`clip(round_half_even(f32(a - a_zp) * a_mult + f32(b - b_zp) * b_mult) + out_zp)`,
    each f32 operation rounded separately; `a` and `b` have the same shape. The parameters
    are the tensors `qcompile.ops.param_consts` makes of `ops.QADD_PARAMS` (inputs, not
    immediates: tuning records then match every calibration), then the output dtype."""
    f32 = "float32"
    *tensors, out_dtype = params_and_dtype
    params = [t[(0,) * len(t.shape)] for t in tensors]

    def fn(*idx):
        # a - a_zp in f32: both integers below 2^24, exact as the int32 subtraction was
        xa = (a[idx].astype(f32) - params[0]) * params[1]
        xb = (b[idx].astype(f32) - params[2]) * params[3]
        r = tirx.round(_fence(xa) + _fence(xb)) + params[4]
        r = tirx.max(tirx.min(r, params[6]), params[5])
        return r.astype(out_dtype)

    return te.compute(a.shape, fn, name="qadd")
