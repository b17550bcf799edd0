"""Pass 4 — fuse dequantize + the next quantize into one requantize (and realize the
quantized add and concat, which need their output's quantization parameters).

Expects: the output of pass 3.

Guarantees: every `quantize(y, P_y)` whose input `y` is reached from an integer value through
a chain of `relu`, `clip`, `max_pool2d` and shape ops (reshape, flatten, permute_dims,
expand_dims, squeeze) is rewritten, the quantize's var (name) kept:
  y = dequantize(x, P_x)                 -> qcompile.requantize(acc, f32(s_x / s_y), out_zp,
                                             clip) with acc = x (int32, zp 0) or
                                             int32(x) - zp_x; identity when P_x == P_y
  y = add(dequantize(a), dequantize(b))  -> qcompile.qadd(a, b, zp_a, f32(s_a/s_y), zp_b,
                                             f32(s_b/s_y), zp_y, clip)  (same shapes,
                                             per-tensor parameters), named after the add
  y = concat(dequantize(x_i)...)         -> concat(requantize(x_i) ...)
The relu / clip ops of the chain become the requantize's clip bounds (`q(relu(v))` =
`max(q(v), zp_y)`, `q(clip(v, a, b))` = `clip(q(v), q(a), q(b))`: quantization is monotonic,
and clips commute with max-pool and shape ops); the other chain ops are re-emitted on the
integer result under their own names. Multipliers are computed in float64 and stored as
float32. A quantize whose input is not reached this way (a real f32 op) stays: it is where an
integer region starts.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import ops as qops
from .. import reference
from ._common import (Q, BindingRewriter, QParams, dtype_of, int_range, make_params,
                      op_name, shape_of)

_CLIPS = {"relax.nn.relu", "relax.clip"}
_STRUCT = {"relax.nn.max_pool2d", "relax.reshape", "relax.flatten", "relax.permute_dims",
           "relax.expand_dims", "relax.squeeze"}


def _prim(x):
    v = x.value if hasattr(x, "value") else x
    return float(v.value if hasattr(v, "value") else v)


@relax.expr_functor.mutator
class _Fuse(BindingRewriter):
    def rewrite(self, var, value):
        if op_name(value) != Q:
            return None
        x = value.args[0]
        if self.const(x) is not None:
            return None  # a quantized constant (weight): realize_integer_ops' business
        chain, cur = [], x
        for _ in range(32):
            v = self.value_of(cur)
            name = op_name(v)
            if name in _CLIPS or name in _STRUCT:
                chain.append((cur, v))
                cur = v.args[0]
                continue
            break
        base_val = self.value_of(cur)

        def refuse(reason: str):
            """Leave this quantize alone; when its input is a dequantized value (so the
            pair runs as an f32 requantize) say why, for model.json / --strict."""
            if self.dq(cur) is not None or op_name(base_val) in ("relax.add", "relax.concat"):
                self.report(var, "requantize", f"dequantize -> quantize left in f32: {reason}")
            return None

        s, z = self.const(value.args[1]), self.const(value.args[2])
        if s is None or z is None:
            return refuse("the quantize's scale / zero point are not constants")
        py = make_params(s, z, int(value.attrs.axis), str(value.attrs.out_dtype))
        if any(op_name(v) == "relax.nn.max_pool2d" and str(v.attrs.layout) != "NCHW"
               for _, v in chain):
            return refuse("a max-pool in the chain is not NCHW")
        structural = [(c, v) for c, v in chain if op_name(v) in _STRUCT]
        if not py.per_tensor and any(op_name(v) != "relax.nn.max_pool2d" for _, v in structural):
            return refuse("per-channel output parameters through a shape op")
        zy = py.uniform_zp()
        if zy is None:
            return refuse("per-channel output zero points that differ")
        dlo, dhi = int_range(py.dtype)
        lo = np.full(py.zp.shape, dlo, np.int64)
        hi = np.full(py.zp.shape, dhi, np.int64)
        for _, v in chain:
            if op_name(v) == "relax.nn.relu":
                lo = np.maximum(lo, py.zp)
            elif op_name(v) == "relax.clip":
                a, b = _prim(v.args[1]), _prim(v.args[2])
                qa, qb = (reference.quantize(
                    np.full(py.scale.shape, t if np.isfinite(t) else np.sign(t) * 3e38,
                            np.float32), py.scale, py.zp, 0, py.dtype).astype(np.int64)
                    for t in (a, b))
                lo, hi = np.maximum(lo, qa), np.minimum(hi, qb)
        if np.any(lo > hi):
            return refuse("the relu / clip chain leaves an empty integer range")
        # per-channel bounds: the uniform part goes into the requantize, the rest into an
        # integer maximum / minimum with a per-channel constant after it
        lo_s, hi_s = int(lo.min()), int(hi.max())
        post = []
        if lo.size > 1 and np.any(lo != lo_s):
            post.append(("relax.maximum", lo))
        if hi.size > 1 and np.any(hi != hi_s):
            post.append(("relax.minimum", hi))
        lo, hi = lo_s, hi_s
        base = None
        d = self.dq(cur)
        self._why = None
        if d is not None and self.const(d[0]) is None:
            base = self._requantize(var, d[0], d[1], py, zy, lo, hi, bool(structural))
        elif op_name(base_val) == "relax.add":
            base = self._qadd(var, cur, base_val, py, zy, lo, hi, bool(structural))
        elif op_name(base_val) == "relax.concat":
            base = self._concat(var, cur, base_val, py, zy, lo, hi, bool(structural))
        else:
            return None  # a real f32 op: an integer region starts at this quantize
        if base is None:
            return refuse(self._why or "no integer rule matched")
        if post:
            if not isinstance(base, relax.Var):
                base = self.emit(base, var.name + "__rq")
            shape = [1] * len(shape_of(var))
            shape[py.axis] = -1
            for i, (opn, bound) in enumerate(post):
                c = relax.const(bound.reshape(shape).astype(py.dtype))
                f = relax.op.maximum if opn == "relax.maximum" else relax.op.minimum
                base = self.emit(f(base, c), f"{var.name}__clip{i}")
        if not structural:
            return self.finish(var, base, var.name) if not isinstance(
                base, relax.Var) else self._alias(var, base)
        out = base
        for i, (c, v) in enumerate(reversed(structural)):
            call = relax.Call(v.op, [out] + list(v.args[1:]), v.attrs)
            if i == len(structural) - 1:
                return self.finish(var, call, c.name if isinstance(c, relax.Var) else var.name)
            out = self.emit(call, c.name if isinstance(c, relax.Var) else var.name + "__s")
        return None

    def _alias(self, var, new_var):
        if not isinstance(var, relax.DataflowVar) and self.in_dataflow:
            self.bind(var, new_var)
        else:
            self.set_var_remap(var, new_var)
        return self.DONE

    # ---------------------------------------------------------------- bases
    def _requantize(self, var, x, px: QParams, py: QParams, zy, lo, hi, emit_now):
        dt = dtype_of(x)
        if not dt or "int" not in dt:
            self._why = f"the dequantized value is {dt or 'of unknown dtype'}, not an integer"
            return None
        if px.dtype == py.dtype and _same_values(px, py) and (lo, hi) == int_range(py.dtype):
            return x
        if px.dtype == py.dtype and _same_values(px, py):
            c = relax.op.clip(x, relax.prim_value(lo), relax.prim_value(hi))
            return self.emit(c, var.name + "__rq") if emit_now else c
        if not px.per_tensor and not py.per_tensor and px.axis != py.axis:
            self._why = f"per-channel axes differ (dequantize {px.axis}, quantize {py.axis})"
            return None
        rank = len(shape_of(x))
        if np.any(px.zp != 0) or dt != "int32":
            acc = relax.op.astype(x, "int32")
            if np.any(px.zp != 0):
                zp = px.zp if px.per_tensor else px.zp.reshape(
                    [-1 if i == px.axis else 1 for i in range(rank)])
                acc = relax.op.subtract(acc, relax.const(np.asarray(zp, np.int32)))
            x = self.emit(acc, var.name + "__acc")
        sx, sy = px.scale.astype(np.float64), py.scale.astype(np.float64)
        mult = (sx / sy).astype(np.float32)
        axis = px.axis if not px.per_tensor else py.axis
        m = relax.const(mult.reshape(()) if mult.size == 1 else mult.reshape(-1))
        r = qops.requantize(x, m, axis=axis, out_zp=zy, out_dtype=py.dtype, clip_min=lo,
                            clip_max=hi)
        return self.emit(r, var.name + "__rq") if emit_now else r

    def _qadd(self, var, addvar, call, py, zy, lo, hi, emit_now):
        da, db = self.dq(call.args[0]), self.dq(call.args[1])
        if da is None or db is None:
            self._why = "an input of the add is not dequantized"
            return None
        if not py.per_tensor:
            self._why = "the add's output is quantized per channel (qadd takes one scale)"
            return None
        (a, pa), (b, pb) = da, db
        if not (pa.per_tensor and pb.per_tensor):
            self.report(addvar, "add", "per-channel quantized inputs (qadd takes one scale "
                                       "per input)")
            return None
        if self.const(a) is not None:
            (a, pa), (b, pb) = (b, pb), (a, pa)
        if self.const(a) is not None:
            self._why = "both inputs of the add are constants"
            return None
        bc = self.const(b)
        if bc is not None:   # a quantized constant (a bias ONNX Runtime quantized): broadcast
            b = relax.const(bc)
        if shape_of(a) != shape_of(addvar) or (bc is None and shape_of(b) != shape_of(a)):
            self.report(addvar, "add", "broadcasting add of two activations")
            return None
        sy = np.float64(py.s)
        r = qops.qadd(a, b, pa.z, np.float64(pa.s) / sy, pb.z, np.float64(pb.s) / sy, zy,
                      py.dtype, lo, hi)
        name = addvar.name if isinstance(addvar, relax.Var) else var.name + "__qadd"
        return self.emit(r, name)

    def _concat(self, var, catvar, call, py, zy, lo, hi, emit_now):
        t = self.value_of(call.args[0])
        if not isinstance(t, relax.Tuple) or not py.per_tensor:
            self._why = "the concat's output is quantized per channel" if isinstance(
                t, relax.Tuple) else "the concat's inputs are not a tuple"
            return None
        parts = []
        for i, f in enumerate(t.fields):
            d = self.dq(f)
            if d is None or self.const(d[0]) is not None or not d[1].per_tensor:
                self._why = (f"concat input {i} is not a per-tensor dequantized activation")
                return None
            r = self._requantize(var, d[0], d[1], py, zy, lo, hi, False)
            if r is None:
                return None
            if not isinstance(r, relax.Var):
                r = self.emit(r, f"{var.name}__rq{i}")
            parts.append(r)
        name = catvar.name if isinstance(catvar, relax.Var) else var.name + "__cat"
        return self.emit(relax.op.concat(parts, axis=int(call.attrs.axis)), name)


def _same_values(a: QParams, b: QParams) -> bool:
    sa, sb = np.broadcast_arrays(a.scale, b.scale)
    za, zb = np.broadcast_arrays(a.zp, b.zp)
    if not (a.per_tensor or b.per_tensor) and a.axis != b.axis:
        return False
    return bool(np.array_equal(sa, sb) and np.array_equal(za, zb))


def FuseRequantize(ctx=None):
    @tvm.transform.module_pass(opt_level=0, name="qcompile.FuseRequantize")
    def _pass(mod, _pc):
        return _Fuse(mod, ctx).result()

    return _pass
