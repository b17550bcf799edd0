"""qcompile's custom Relax ops (registered from Python on import) and their legalization.

* `qcompile.fake_quantize(x, il, ih, ol, oh)`, attr `levels`: OpenVINO opset1 FakeQuantize
  (docs/architecture.md, numerics contract), element-wise with numpy broadcasting of the four range tensors, f32.
* `qcompile.requantize(acc, multiplier)`, attrs `axis, out_zp, out_dtype, clip_min,
  clip_max`: `clip(round_half_even(f32(acc) * multiplier) + out_zp, clip_min, clip_max)`,
  `multiplier` a f32 scalar or a vector along `axis`.
* `qcompile.qadd(a, b)`, attrs `a_zp, a_mult, b_zp, b_mult, out_zp, out_dtype, clip_min,
  clip_max`: `clip(round_half_even(f32(a - a_zp) * a_mult + f32(b - b_zp) * b_mult) +
  out_zp, ...)`; the result has `a`'s shape, `b` has it too or broadcasts to it (numpy
  rules; a quantized constant such as a bias).

Semantics are those of docs/integer-ir.md and `qcompile.reference`. Each op has FInferType,
FPurity and an FLegalize (a TE compute) so TVM's default `LegalizeOps` lowers it on the
generic path. Every f32 product that is followed by an add is wrapped in
`llvm.arithmetic.fence`: TVM's LLVM backend allows FP contraction, and an FMA would differ
from the reference (each f32 operation rounded separately) at rounding ties.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

FAKE_QUANTIZE = "qcompile.fake_quantize"
REQUANTIZE = "qcompile.requantize"
QADD = "qcompile.qadd"

_F32 = "float32"


# ----------------------------------------------------------------------------- helpers
def _attrs(**kw):
    return tvm.ir.make_node("ir.DictAttrs", **kw)


def attr(call, key, default=None):
    """An attribute of a call to a qcompile op (or a Relax op), as a Python value."""
    a = call.attrs
    if a is None:
        return default
    try:
        v = a[key]
    except (KeyError, IndexError, TypeError, AttributeError):
        v = getattr(a, key, default)
    if v is None:
        return default
    if isinstance(v, tirx.IntImm):
        return int(v.value)
    if isinstance(v, tirx.FloatImm):
        return float(v.value)
    if isinstance(v, str):
        return str(v)
    return v


def _bcast_index(t: te.Tensor, idx, rank: int, out_shape=None):
    """Index tensor `t` (rank <= `rank`, numpy-broadcast against the output) at `idx`; a
    dim of extent 1 is indexed with 0 unless the output's dim is 1 too (`out_shape`), so a
    same-shaped operand is indexed exactly like the output."""
    r = len(t.shape)
    sub = []
    for k in range(r):
        dim = t.shape[k]
        i = idx[rank - r + k]
        same = out_shape is not None and int(out_shape[rank - r + k]) == 1
        sub.append(0 if (isinstance(dim, tirx.IntImm) and int(dim) == 1 and not same)
                   else i)
    return t[tuple(sub)] if sub else t[()]


def _fence(v):
    return tirx.call_llvm_pure_intrin(_F32, "llvm.arithmetic.fence", v)


def lrint_i32(v):
    """f32 -> int32 rounded in the current rounding mode (round-half-even: TVM never changes
    MXCSR), i.e. `int32(round_half_even(v))` for |v| < 2^31: LLVM's `llvm.lrint`, which its
    x86 backend vectorizes to one `vcvtps2dq` (instead of `vrndscaleps`, two uops, plus
    `vcvttps2dq`). Out of range the result is unspecified: callers clamp first. LLVM targets
    only (the OpenCL code generator has no LLVM intrinsics)."""
    return tirx.call_llvm_pure_intrin("int32", "llvm.lrint", v)


def offset_clip_cast(v, zp, lo, hi, dtype: str, lrint: bool = False):
    """`dtype(clip(round_half_even(v) + zp, lo, hi))` for f32 `v` and integer-valued f32
    `zp`, `lo`, `hi` (the requantize / qadd output stage of docs/integer-ir.md).

    With `lrint` it is computed as `dtype(lrint(clip(v, lo - zp, hi - zp)) + int32(zp))`:
    equal, since rounding is monotonic and maps the integers `lo - zp`, `hi - zp` to
    themselves (v below `lo - zp` rounds to at most `lo - zp`, and so on), every f32 value
    involved is an integer below 2^24 (exact), and the clipped value is inside int32 (lrint
    is defined). On x86 that is `vminps, vmaxps, vcvtps2dq, vpaddd` instead of `vrndscaleps`
    (2 uops), `vaddps, vminps, vmaxps, vcvttps2dq`: two of the ~11 vector uops per output
    vector of a requantize epilogue, of ~21 for a residual add (ResNet-50's 1x1 convs with
    K = 64 spend as many uops in the epilogue as in their vpdpbusd)."""
    if lrint:
        c = tirx.max(tirx.min(v, hi - zp), lo - zp)
        return (lrint_i32(c) + zp.astype("int32")).astype(dtype)
    r = tirx.round(v) + zp
    return tirx.max(tirx.min(r, hi), lo).astype(dtype)


# ------------------------------------------------------------------------ fake_quantize
def fake_quantize(x, il, ih, ol, oh, levels: int) -> relax.Call:
    return relax.Call(tvm.ir.Op.get(FAKE_QUANTIZE), [x, il, ih, ol, oh],
                      _attrs(levels=int(levels)))


def _infer_fake_quantize(call, ctx):
    ty = call.args[0].ty
    return relax.TensorType(ty.shape, _F32)


def _legalize_fake_quantize(bb, call):
    levels = int(attr(call, "levels"))

    def fq(x, il, ih, ol, oh):
        rank = len(x.shape)
        steps = tirx.const(float(levels - 1), _F32)

        def fn(*i):
            v = x[i]
            a, b = _bcast_index(il, i, rank), _bcast_index(ih, i, rank)
            c, d = _bcast_index(ol, i, rank), _bcast_index(oh, i, rank)
            q = tirx.round((v - a) / (b - a) * steps)
            y = _fence(q / steps * (d - c)) + c
            return tirx.Select(v <= tirx.min(a, b), c, tirx.Select(v > tirx.max(a, b), d, y))

        return te.compute(x.shape, fn, name="fake_quantize")

    return bb.call_te(fq, *call.args, primfunc_name_hint="fake_quantize")


# --------------------------------------------------------------------------- requantize
def requantize(acc, multiplier, axis: int = 1, out_zp: int = 0, out_dtype: str = "uint8",
               clip_min: int | None = None, clip_max: int | None = None) -> relax.Call:
    """`qcompile.requantize`; clip bounds default to the range of `out_dtype`."""
    info = np.iinfo(out_dtype)
    lo = int(info.min if clip_min is None else clip_min)
    hi = int(info.max if clip_max is None else clip_max)
    return relax.Call(tvm.ir.Op.get(REQUANTIZE), [acc, multiplier],
                      _attrs(axis=int(axis), out_zp=int(out_zp), out_dtype=str(out_dtype),
                             clip_min=lo, clip_max=hi))


def _infer_requantize(call, ctx):
    return relax.TensorType(call.args[0].ty.shape, str(attr(call, "out_dtype")))


def param_consts(values, rank: int) -> list:
    """Calibration-dependent scalars (zero points, clip bounds, multipliers) as f32 tensors
    of shape [1]*rank: PrimFunc inputs instead of immediates in its body, so a tuning record
    (keyed on the PrimFunc's structure) matches every calibration of the same layer shapes,
    and broadcast-shaped, so FuseOps still fuses the op into its producer. Integers are exact
    in f32; multipliers are f32 already."""
    return [relax.const(np.full((1,) * rank, v, np.float32)) for v in values]


def scalar(t):
    """The one element of a `param_consts` tensor."""
    return t[(0,) * len(t.shape)]



QADD_PARAMS = ("a_zp", "a_mult", "b_zp", "b_mult", "out_zp", "clip_min", "clip_max")


def _legalize_requantize(bb, call):
    axis = int(attr(call, "axis", 1))
    dtype = str(attr(call, "out_dtype"))
    rank0 = len(call.args[0].ty.shape)
    params = param_consts([float(attr(call, "out_zp", 0)), float(attr(call, "clip_min")),
                           float(attr(call, "clip_max"))], rank0)

    def rq(acc, mult, zp, lo, hi):
        rank = len(acc.shape)
        ax = axis % rank if rank else 0
        per_axis = len(mult.shape) >= 1 and not all(
            isinstance(d, tirx.IntImm) and int(d) == 1 for d in mult.shape)

        def fn(*i):
            if per_axis:
                m = mult[i[ax]]
            else:
                m = mult[(0,) * len(mult.shape)] if len(mult.shape) else mult[()]
            r = tirx.round(acc[i].astype(_F32) * m) + scalar(zp)
            r = tirx.max(tirx.min(r, scalar(hi)), scalar(lo))
            return r.astype(dtype)

        return te.compute(acc.shape, fn, name="requantize")

    return bb.call_te(rq, call.args[0], call.args[1], *params,
                      primfunc_name_hint="requantize")


# --------------------------------------------------------------------------------- qadd
def qadd(a, b, a_zp: int, a_mult: float, b_zp: int, b_mult: float, out_zp: int,
         out_dtype: str = "uint8", clip_min: int | None = None,
         clip_max: int | None = None) -> relax.Call:
    info = np.iinfo(out_dtype)
    lo = int(info.min if clip_min is None else clip_min)
    hi = int(info.max if clip_max is None else clip_max)
    return relax.Call(tvm.ir.Op.get(QADD), [a, b],
                      _attrs(a_zp=int(a_zp), a_mult=float(np.float32(a_mult)), b_zp=int(b_zp),
                             b_mult=float(np.float32(b_mult)), out_zp=int(out_zp),
                             out_dtype=str(out_dtype), clip_min=lo, clip_max=hi))


def _infer_qadd(call, ctx):
    return relax.TensorType(call.args[0].ty.shape, str(attr(call, "out_dtype")))


def qadd_compute(a: te.Tensor, b: te.Tensor, *params_and_dtype, lrint: bool = False) -> te.Tensor:
    """`clip(round_half_even(f32(a - a_zp) * a_mult + f32(b - b_zp) * b_mult) + out_zp)`,
    each f32 operation rounded separately (both products FMA-fenced), `b` broadcast to `a`.
    The parameters are the `param_consts` tensors of `QADD_PARAMS` (inputs, not immediates:
    tuning records then match every calibration), then the output dtype. Used by the
    legalization below and, on NCHW[L]c data, by the x86 int8 regions (`lrint=True`: see
    `offset_clip_cast`)."""
    *tensors, dtype = params_and_dtype
    rank = len(a.shape)

    def fn(*i):
        p = [scalar(t) for t in tensors]
        # a - a_zp in f32: both integers below 2^24, exact as the int32 subtraction was
        xa = (a[i].astype(_F32) - p[0]) * p[1]
        xb = (_bcast_index(b, i, rank, a.shape).astype(_F32) - p[2]) * p[3]
        return offset_clip_cast(_fence(xa) + _fence(xb), p[4], p[5], p[6], dtype, lrint)

    return te.compute(a.shape, fn, name="qadd")


REQUANTIZED_QADD_PARAMS = ("a_lo", "a_hi", "a_mult", "b_zp", "b_mult", "out_zp", "clip_min",
                           "clip_max")


def requantized_qadd_compute(r: te.Tensor, b: te.Tensor, *params_and_dtype,
                             lrint: bool = False) -> te.Tensor:
    """`qadd(requantize(acc), b)` when the requantized value is used only by the add:
    `r = round_half_even(f32(acc) * mult)` (f32, not yet offset or clipped) and
    `xa = clip(r, clip_min - zp, clip_max - zp) * a_mult`, the rest as `qadd_compute`.
    Bit-exact to the two ops when qadd's `a_zp` is the requantize's `out_zp`: `r` is an
    integer, so `clip(r + zp, lo, hi) - zp == clip(r, lo - zp, hi - zp)` in f32 (both sides
    exact below 2^24; beyond it both clip to the same bound), and the uint8 value in between
    is that integer. It saves the offset, the f32 -> int -> f32 round trip and the second
    offset per element in the epilogue of a residual conv. Parameters: the `param_consts`
    tensors of `REQUANTIZED_QADD_PARAMS`, then the output dtype."""
    *tensors, dtype = params_and_dtype
    rank = len(r.shape)

    def fn(*i):
        p = [scalar(t) for t in tensors]
        xa = tirx.max(tirx.min(r[i], p[1]), p[0]) * p[2]
        xb = (_bcast_index(b, i, rank, r.shape).astype(_F32) - p[3]) * p[4]
        return offset_clip_cast(_fence(xa) + _fence(xb), p[5], p[6], p[7], dtype, lrint)

    return te.compute(r.shape, fn, name="qadd")


def _legalize_qadd(bb, call):
    dtype = str(attr(call, "out_dtype", "uint8"))
    params = param_consts([float(attr(call, k, 0)) for k in QADD_PARAMS],
                          len(call.args[0].ty.shape))
    return bb.call_te(qadd_compute, call.args[0], call.args[1], *params, dtype,
                      primfunc_name_hint="qadd")


# ------------------------------------------------------------------------- registration
_REGISTERED = False


def register() -> None:
    """Register the ops (idempotent; importing this module does it)."""
    global _REGISTERED
    if _REGISTERED:
        return
    reg = tvm.ir._ffi_api.RegisterOpAttr
    for name, infer, legal in ((FAKE_QUANTIZE, _infer_fake_quantize, _legalize_fake_quantize),
                               (REQUANTIZE, _infer_requantize, _legalize_requantize),
                               (QADD, _infer_qadd, _legalize_qadd)):
        reg(name, "FInferType", infer, 10)
        reg(name, "FPurity", True, 10)
        reg(name, "FLegalize", legal, 10)
    _REGISTERED = True


def is_op(expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and \
        expr.op.name == name


register()
