"""Pass 1 — decompose FakeQuantize; fold weight quantization into int8 constants.

Expects: a Relax module from the frontend, with `qcompile.fake_quantize`, `R.quantize` and
`R.dequantize` (QDQ models) around fp32 ops.

Guarantees:
* `fake_quantize(x, il, ih, ol, oh, L)` with constant ranges, L in {255, 256}, il < ih and
  ol < oh, and ranges that are per tensor or per one axis, becomes
  `dequantize(quantize(x, s_i, zp_i, uint8) [-> clip(0, 254) when L = 255], s_o, zp_o)` with
  `s = (high - low) / (L - 1)` and `zp = -low / s` (an integer up to `ZP_TOL` of a step; in
  [0, 255]). The dequantize keeps the FakeQuantize's var (name); the quantize is `<var>__q`.
  The integer form equals the FakeQuantize formula except where f32 rounding of
  `(x - il) / (ih - il) * (L - 1)` and of `x / s + zp` fall on different sides of a .5 tie.
* a FakeQuantize of a constant (a weight) is evaluated exactly (OpenVINO's formula) and
  becomes `dequantize(w_q, s_o, 0, axis)` with `w_q` an int8 constant (symmetric ranges:
  255 levels -> [-127, 127], 256 -> [-128, 127]); an asymmetric weight whose values do not
  fit int8 becomes a uint8 constant with its zero point (reported by the realization).
* `quantize(constant)` (weights written as float + QuantizeLinear) is folded the same way;
  `dequantize(u8/s8 constant, s, zp != 0)` becomes an int8 constant with zero point 0 when
  `w - zp` fits int8.
* activation quantization is canonicalized to uint8: an int8 `quantize` whose every use is a
  `dequantize` becomes uint8 with zero point `zp + 128` (exact: the same real values).
* anything else stays as it is: FakeQuantize with other level counts, il > ih (OpenVINO's
  definition is then not monotonic), non-constant or multi-axis ranges, or a zero point
  outside [0, 255] is kept as an f32 `qcompile.fake_quantize` and reported with the reason.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import ops as qops
from .. import reference
from ._common import (DQ, Q, ZP_TOL, BindingRewriter, dequantize, dtype_of, make_params,
                      op_name, quantize, shape_of)


def _range_axis(vals, rank: int):
    """(axis or None, [vectors]) for range tensors broadcast against a rank-`rank` tensor."""
    arrs = [np.asarray(v, np.float64) for v in vals]
    full = []
    for a in arrs:
        if a.ndim > rank:
            if a.size == 1:
                a = a.reshape(())
            else:
                return "bad", None
        full.append(a.reshape((1,) * (rank - a.ndim) + a.shape))
    shape = np.broadcast_shapes(*[f.shape for f in full]) if full else ()
    axes = [i for i, d in enumerate(shape) if d != 1]
    if not axes:
        return None, [f.reshape(()) for f in full]
    if len(axes) > 1:
        return "bad", None
    ax = axes[0]
    return ax, [np.broadcast_to(f, shape).reshape(-1).copy() for f in full]


def _int_zp(low, scale):
    zp = -np.asarray(low, np.float64) / np.asarray(scale, np.float64)
    r = np.round(zp)
    if np.any(np.abs(zp - r) > ZP_TOL):
        return None
    return r.astype(np.int64)


@relax.expr_functor.mutator
class _Decompose(BindingRewriter):
    def __init__(self, mod, ctx):
        super().__init__(mod, ctx)
        self.shifted: set = set()      # rewritten quantize vars moved from int8 to uint8

    def rewrite(self, var, value):
        name = op_name(value)
        if name == qops.FAKE_QUANTIZE:
            return self._fake_quantize(var, value)
        if name == Q:
            return self._quantize(var, value)
        if name == DQ:
            return self._dequantize(var, value)
        return None

    # ---------------------------------------------------------------- FakeQuantize
    def _keep(self, var, reason):
        self.report(var, "FakeQuantize", reason + "; kept as an f32 FakeQuantize")
        return None

    def _fake_quantize(self, var, call):
        levels = int(qops.attr(call, "levels"))
        x = call.args[0]
        rng = [self.const(a) for a in call.args[1:]]
        if any(r is None for r in rng):
            return self._keep(var, "non-constant ranges")
        if levels not in (255, 256):
            return self._keep(var, f"levels={levels} has no 8-bit integer realization "
                                   "(only 255/256 levels are int8)")
        xs = shape_of(x)
        if xs is None:
            return self._keep(var, "input shape unknown")
        axis, vecs = _range_axis(rng, len(xs))
        if axis == "bad":
            return self._keep(var, "ranges vary along more than one axis")
        il, ih, ol, oh = vecs
        xv = self.const(x)
        if xv is not None:
            return self._weight(var, call, xv, rng, levels, axis, ol, oh)
        if np.any(il >= ih) or np.any(ol >= oh):
            return self._keep(var, "input_low > input_high (or output_low > output_high): "
                                   "not a monotonic quantizer")
        steps = levels - 1
        s_i, s_o = (ih - il) / steps, (oh - ol) / steps
        zp_i, zp_o = _int_zp(il, s_i), _int_zp(ol, s_o)
        if zp_i is None or zp_o is None:
            return self._keep(var, "the range does not put 0.0 on a quantization level "
                                   "(non-integer zero point)")
        if zp_i.min() < 0 or zp_i.max() > 255 or zp_o.min() < 0 or zp_o.max() > 255:
            return self._keep(var, "the range does not contain 0.0 (zero point outside "
                                   "[0, 255])")
        ax = 0 if axis is None else axis
        p_in = make_params(s_i, zp_i, ax, "uint8")
        p_out = make_params(s_o, zp_o, ax, "uint8")
        q = self.emit(quantize(x, p_in), var.name + "__q")
        if levels == 255:
            q = self.emit(relax.op.clip(q, relax.prim_value(0), relax.prim_value(254)),
                          var.name + "__clip")
        return dequantize(q, p_out)

    def _weight(self, var, call, w, rng, levels, axis, ol, oh):
        q_idx = _fq_index(w, *rng, levels)
        if np.any(ol >= oh):
            return self._keep(var, "weight output_low >= output_high")
        s_o = (oh - ol) / (levels - 1)
        zp = _int_zp(ol, s_o)
        if zp is None:
            return self._keep(var, "weight output range has a non-integer zero point")
        ax = 0 if axis is None else axis
        zb = zp if axis is None else zp.reshape([-1 if i == ax else 1 for i in range(w.ndim)])
        wi = q_idx - zb
        if wi.min(initial=0) >= -128 and wi.max(initial=0) <= 127:
            return dequantize(relax.const(wi.astype(np.int8)),
                              make_params(s_o, np.zeros_like(zp), ax, "int8"))
        if zp.min() >= 0 and zp.max() <= 255:
            return dequantize(relax.const(q_idx.astype(np.uint8)),
                              make_params(s_o, zp, ax, "uint8"))
        return self._keep(var, "weight quantization does not fit 8 bits")

    # ---------------------------------------------------------------- QDQ
    def _quantize(self, var, call):
        x = call.args[0]
        s, z = self.const(call.args[1]), self.const(call.args[2])
        if s is None or z is None:
            return None
        p = make_params(s, z, int(call.attrs.axis), str(call.attrs.out_dtype))
        xv = self.const(x)
        if xv is not None:  # a float weight behind a QuantizeLinear: fold it
            return relax.const(reference.quantize(xv, p.scale, p.zp, p.axis, p.dtype))
        if p.dtype == "int8" and self._only_dequantized(var):
            p8 = p.with_(zp=p.zp + 128, dtype="uint8")
            new = self.bind(var, quantize(x, p8))
            self.shifted.add(new)
            return self.DONE
        return None

    def _only_dequantized(self, var) -> bool:
        uses = self.uses.get(var, [])
        return bool(uses) and all(b is not None and op_name(b.value) == DQ
                                  and b.value.args[0].same_as(var) for b in uses)

    def _dequantize(self, var, call):
        q = call.args[0]
        s, z = self.const(call.args[1]), self.const(call.args[2])
        if s is None or z is None:
            return None
        p = make_params(s, z, int(call.attrs.axis), dtype_of(q))
        if isinstance(q, relax.Var) and q in self.shifted:
            return dequantize(q, p.with_(zp=p.zp + 128, dtype="uint8"), "uint8")
        w = self.const(q)
        if w is not None and w.dtype in (np.uint8, np.int8) and np.any(p.zp != 0):
            zb = p.zp if p.per_tensor else p.zp.reshape(
                [-1 if i == p.axis else 1 for i in range(w.ndim)])
            wi = w.astype(np.int64) - zb
            if wi.min(initial=0) >= -128 and wi.max(initial=0) <= 127:
                return dequantize(relax.const(wi.astype(np.int8)),
                                  p.with_(zp=np.zeros_like(p.zp), dtype="int8"))
        if w is not None and not isinstance(q, tvm.ir.expr.GenericConst):
            return dequantize(relax.const(w), p)
        return None


def _fq_index(x, il, ih, ol, oh, levels):
    """The FakeQuantize level index (0 .. L-1) of every element, as OpenVINO computes it."""
    x = np.asarray(x, np.float32)
    il, ih = np.asarray(il, np.float32), np.asarray(ih, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.round((x - il) / (ih - il) * np.float32(levels - 1))
    lo, hi = np.minimum(il, ih), np.maximum(il, ih)
    return np.where(x <= lo, 0, np.where(x > hi, levels - 1, q)).astype(np.int64)


def DecomposeFakeQuantize(ctx=None):
    @tvm.transform.module_pass(opt_level=0, name="qcompile.DecomposeFakeQuantize")
    def _pass(mod, _pc):
        return _Decompose(mod, ctx).result()

    return _pass
