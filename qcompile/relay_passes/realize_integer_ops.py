"""Pass 3 — realize compute ops on integers.

Expects: the output of pass 2: compute ops whose inputs are `dequantize(q, const, const)`.

Guarantees (docs/integer-ir.md): each op below whose quantized inputs qualify is replaced by
its integer form, bound under the op's var name (the ONNX node), followed by
`dequantize(acc_i32, s_acc, 0, axis)` (`<var>__dq`) so that its float consumers are
unchanged; pass 4 turns that dequantize and the next quantize into one requantize.

  conv2d(dq(x_u8, s_x, zp_x), dq(w_s8 const, s_w[c], 0))   (grouped, depthwise, strided,
      dilated; NCHW/OIHW)  ->  [pad(x, zp_x)] conv2d(x, w, out_dtype=int32)
      + (-zp_x * sum(w[c]))  ;  s_acc = s_x * s_w[c]
  matmul(dq(a_u8), dq(w_s8 const [K, N], s_w[n]))  ->  matmul(a, w, int32) + (-zp_a *
      colsum(w))  ;  s_acc = s_a * s_w[n] along the last axis
  matmul(dq(a), dq(b)) of two activations (per tensor)  ->  matmul(a_u8, b_s8, int32)
      - zp_b * rowsum(a) - zp_a * colsum(b) + K * zp_a * zp_b  (b re-quantized to int8 at
      its quantize, or shifted by -128)
  mean over axes (global average pool)  ->  sum(int32(x)) - n * zp_x ; s_acc = s_x / n
  avg_pool2d (no padding, or count_include_pad)  ->  depthwise conv2d with a ones kernel
      (a sum pool) on x padded with zp_x, - k * zp_x ; s_acc = s_x / k
  add(dq(acc_i32, s), bias constant)  ->  acc + round(bias / s)  (merged with the zero-point
      constant; an int32 bias dequantized with s itself, as ONNX Runtime writes it, is added
      as is)
  multiply / divide by a positive scalar constant  ->  absorbed into the dequantize scale
int8 activations are shifted to uint8 (+128) first; the shift is exact and its compensation
is in the zero-point constant. Scales are multiplied in float64 and stored as float32.
A compute op with a quantized input that does not qualify stays in f32 and is reported with
the reason (weight not a constant, asymmetric weight, per-channel activation, ...).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._common import (Q, QParams, dequantize, dtype_of, ints, make_params, op_name, quantize,
                      shape_of)
from .propagate_dequantize import PropagateBase, ScaleByConstant

_RELATIVE_SCALE_TOL = 1e-6
_SHAPE_OPS = ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze",
              "relax.flatten")


class _Reject(Exception):
    """The op cannot be realized; the message is the reason reported."""


def _acc_scale(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64)).astype(np.float32)


@relax.expr_functor.mutator
class Realize(PropagateBase):
    def __init__(self, mod, ctx):
        super().__init__(mod, ctx, rules={"relax.multiply": ScaleByConstant(),
                                          "relax.divide": ScaleByConstant()})
        self.handlers = {
            "relax.nn.conv2d": self._conv2d,
            "relax.matmul": self._matmul,
            "relax.mean": self._mean,
            "relax.nn.avg_pool2d": self._avg_pool,
            "relax.add": self._add,
        }

    def rewrite(self, var, value):
        name = op_name(value)
        h = self.handlers.get(name)
        if h is not None:
            try:
                out = h(var, value)
            except _Reject as why:
                self.report(var, name.split(".")[-1], str(why))
                return None
            if out is not None:
                return out
        return super().rewrite(var, value)

    # ------------------------------------------------------------------ helpers
    def _u8(self, q, p: QParams, name: str):
        """(uint8 data, params) for quantized data: int8 is shifted by +128 exactly."""
        dt = dtype_of(q)
        if dt == "uint8":
            return q, p
        if dt == "int8":
            s = self.emit(relax.op.astype(relax.op.add(relax.op.astype(q, "int16"),
                                                       relax.const(np.int16(128))), "uint8"),
                          name + "__u8")
            return s, p.with_(zp=p.zp + 128, dtype="uint8")
        raise _Reject(f"quantized input has dtype {dt}, not 8-bit")

    def _s8(self, q, p: QParams, name: str):
        """(int8 data, params) for an activation used as the right operand of a matmul: its
        quantize is re-emitted with int8 (zero point - 128), through shape ops; otherwise
        the data is shifted by -128."""
        dt = dtype_of(q)
        if dt == "int8":
            return q, p
        if dt != "uint8":
            raise _Reject(f"quantized input has dtype {dt}, not 8-bit")
        new = self._requant_s8(q, 0)
        if new is None:
            new = self.emit(relax.op.astype(relax.op.subtract(relax.op.astype(q, "int16"),
                                                              relax.const(np.int16(128))),
                                            "int8"), name + "__s8")
        return new, p.with_(zp=p.zp - 128, dtype="int8")

    def _requant_s8(self, expr, depth):
        v = self.value_of(expr)
        name = op_name(v)
        if depth > 8 or not isinstance(expr, relax.Var):
            return None
        if name == Q:
            qq = self.q(expr)
            if qq is None or qq[1].dtype != "uint8":
                return None
            x, p = qq
            return self.emit(quantize(x, p.with_(zp=p.zp - 128, dtype="int8")),
                             expr.name + "__s8")
        if name in _SHAPE_OPS:
            inner = self._requant_s8(v.args[0], depth + 1)
            if inner is None:
                return None
            return self.emit(relax.Call(v.op, [inner] + list(v.args[1:]), v.attrs),
                             expr.name + "__s8")
        return None

    def _inputs(self, call, n=2):
        ds = [self.dq(a) for a in call.args[:n]]
        return ds

    # ------------------------------------------------------------------ conv2d
    def _conv2d(self, var, call):
        x, w = call.args
        dx, dw = self.dq(x), self.dq(w)
        if dx is None and dw is None:
            return None
        if dx is None:
            raise _Reject("activation input is not quantized (no quantize/FakeQuantize on it)")
        if dw is None:
            raise _Reject("weight is not quantized")
        at = call.attrs
        if (str(at.data_layout), str(at.kernel_layout), str(at.out_layout)) != (
                "NCHW", "OIHW", "NCHW"):
            raise _Reject("layout is not NCHW/OIHW")
        wq = self.const(dw[0])
        if wq is None:
            raise _Reject("weight is not a constant")
        pw = dw[1]
        if wq.dtype != np.int8 or np.any(pw.zp != 0):
            raise _Reject("weight is not symmetric int8 (zero point != 0)")
        if not pw.per_tensor and pw.axis != 0:
            raise _Reject("weight scales are not per output channel")
        q, px = dx
        groups = int(at.groups)
        oc, icg = wq.shape[:2]
        depthwise = groups == oc and icg == 1 and shape_of(x)[1] == oc
        if not px.per_tensor and not (depthwise and px.axis == 1):
            raise _Reject("per-channel activation quantization (only depthwise convs take it)")
        q, px = self._u8(q, px, var.name)
        pad = ints(at.padding)
        if len(pad) == 2:
            pad = [pad[0], pad[1], pad[0], pad[1]]
        if any(pad) and np.any(px.zp != 0):
            zpad = px.uniform_zp()
            if zpad is None:
                raise _Reject("per-channel zero points with padding")
            t, l, b, r = pad
            q = self.emit(relax.op.nn.pad(q, [0, 0, 0, 0, t, b, l, r], pad_value=float(zpad)),
                          var.name + "__pad")
            pad = [0, 0, 0, 0]
        acc = self.emit(relax.op.nn.conv2d(q, relax.const(wq), ints(at.strides), pad,
                                           ints(at.dilation), groups, "NCHW", "OIHW", "NCHW",
                                           "int32"), var.name)
        wsum = wq.astype(np.int64).reshape(oc, -1).sum(axis=1)
        zx = px.zp if px.per_tensor else px.zp.reshape(-1)
        comp = -(zx * wsum)
        if np.any(comp):
            acc = self.emit(relax.op.add(acc, relax.const(
                comp.astype(np.int32).reshape(1, -1, 1, 1))), var.name + "__zp")
        sx = px.scale if px.per_tensor else px.scale.reshape(-1)
        scale = _acc_scale(sx, pw.scale)
        return self.finish(var, dequantize(acc, make_params(scale, 0, 1, "int32")),
                           var.name + "__dq")

    # ------------------------------------------------------------------ matmul
    def _matmul(self, var, call):
        a, b = call.args
        da, db = self.dq(a), self.dq(b)
        if da is None and db is None:
            return None
        if da is None or db is None:
            raise _Reject(f"{'left' if da is None else 'right'} input is not quantized")
        qa, pa = da
        if not pa.per_tensor:
            raise _Reject("per-channel quantization of the left operand")
        ash, bsh = shape_of(a), shape_of(b)
        if ash is None or bsh is None or len(ash) < 2 or len(bsh) < 2:
            raise _Reject("matmul operands of rank < 2")
        wq = self.const(db[0])
        if wq is not None:
            return self._dense(var, call, qa, pa, wq, db[1], ash)
        qb, pb = db
        if not pb.per_tensor:
            raise _Reject("per-channel quantization of a non-constant right operand")
        if len(bsh) != len(ash) and len(bsh) != 2:
            raise _Reject("batch dims of the operands differ")
        qa, pa = self._u8(qa, pa, var.name)
        qb, pb = self._s8(qb, pb, var.name)
        out_rank = len(shape_of(var))
        acc = self.emit(relax.op.matmul(qa, qb, out_dtype="int32"), var.name)
        za, zb, k = pa.z, pb.z, ash[-1]
        if zb:
            ra = self.emit(relax.op.sum(relax.op.astype(qa, "int32"), axis=[-1], keepdims=True),
                           var.name + "__rowsum")
            acc = self.emit(relax.op.subtract(acc, _times(ra, zb)), var.name + "__zpb")
        if za:
            cb = self.emit(relax.op.sum(relax.op.astype(qb, "int32"), axis=[-2], keepdims=True),
                           var.name + "__colsum")
            acc = self.emit(relax.op.subtract(acc, _times(cb, za)), var.name + "__zpa")
        if za and zb:
            acc = self.emit(relax.op.add(acc, relax.const(np.int32(k * za * zb))),
                            var.name + "__zpab")
        scale = _acc_scale(pa.s, pb.s)
        return self.finish(var, dequantize(acc, make_params(scale, 0, out_rank - 1, "int32")),
                           var.name + "__dq")

    def _dense(self, var, call, qa, pa, wq, pw, ash):
        if wq.ndim != 2:
            raise _Reject("constant right operand is not 2-D")
        if wq.dtype != np.int8 or np.any(pw.zp != 0):
            raise _Reject("weight is not symmetric int8 (zero point != 0)")
        if not pw.per_tensor and pw.axis != 1:
            raise _Reject("weight scales are not per output column")
        qa, pa = self._u8(qa, pa, var.name)
        acc = self.emit(relax.op.matmul(qa, relax.const(wq), out_dtype="int32"), var.name)
        comp = -pa.z * wq.astype(np.int64).sum(axis=0)
        if np.any(comp):
            acc = self.emit(relax.op.add(acc, relax.const(comp.astype(np.int32))),
                            var.name + "__zp")
        out_rank = len(shape_of(var))
        scale = _acc_scale(pa.s, pw.scale)
        return self.finish(var, dequantize(acc, make_params(scale, 0, out_rank - 1, "int32")),
                           var.name + "__dq")

    # ------------------------------------------------------------------ pooling
    def _mean(self, var, call):
        x = call.args[0]
        dx = self.dq(x)
        if dx is None:
            return None
        q, p = dx
        rank = len(shape_of(x))
        axes = list(range(rank)) if call.attrs.axis is None else \
            sorted(int(a) % rank for a in ints(call.attrs.axis))
        keep = bool(call.attrs.keepdims)
        if not p.per_tensor and p.axis in axes:
            raise _Reject("averages over the per-channel axis")
        if not dtype_of(q) in ("uint8", "int8"):
            raise _Reject(f"input dtype {dtype_of(q)}")
        n = int(np.prod([shape_of(x)[a] for a in axes]))
        acc = self.emit(relax.op.sum(relax.op.astype(q, "int32"), axis=axes, keepdims=keep),
                        var.name)
        out_axis = p.axis if keep or p.per_tensor else p.axis - sum(a < p.axis for a in axes)
        if np.any(p.zp != 0):
            comp = -n * p.zp
            if not p.per_tensor:
                shape = [1] * len(shape_of(var))
                shape[out_axis] = -1
                comp = comp.reshape(shape)
            acc = self.emit(relax.op.add(acc, relax.const(np.asarray(comp, np.int32))),
                            var.name + "__zp")
        scale = (p.scale.astype(np.float64) / n).astype(np.float32)
        return self.finish(var, dequantize(acc, make_params(scale, 0, out_axis, "int32")),
                           var.name + "__dq")

    def _avg_pool(self, var, call):
        x = call.args[0]
        dx = self.dq(x)
        if dx is None:
            return None
        at = call.attrs
        if str(at.layout) != "NCHW" or str(at.out_layout) != "NCHW":
            raise _Reject("layout is not NCHW")
        pad = ints(at.padding)
        if len(pad) == 2:
            pad = [pad[0], pad[1], pad[0], pad[1]]
        if bool(at.ceil_mode):
            raise _Reject("ceil_mode pooling (windows of varying size)")
        if any(pad) and not bool(at.count_include_pad):
            raise _Reject("padding without count_include_pad (divisor varies)")
        q, p = dx
        if not p.per_tensor and p.axis != 1:
            raise _Reject("per-axis parameters not along channels")
        q, p = self._u8(q, p, var.name)
        c = shape_of(x)[1]
        kh, kw = ints(at.pool_size)
        if any(pad):
            z = p.uniform_zp()
            if z is None:
                raise _Reject("per-channel zero points with padding")
            t, l, b, r = pad
            q = self.emit(relax.op.nn.pad(q, [0, 0, 0, 0, t, b, l, r], pad_value=float(z)),
                          var.name + "__pad")
        ones = np.ones((c, 1, kh, kw), np.int8)
        acc = self.emit(relax.op.nn.conv2d(q, relax.const(ones), ints(at.strides), [0, 0, 0, 0],
                                           ints(at.dilation), c, "NCHW", "OIHW", "NCHW",
                                           "int32"), var.name)
        k = kh * kw
        if np.any(p.zp != 0):
            comp = -k * (p.zp if p.per_tensor else p.zp.reshape(1, -1, 1, 1))
            acc = self.emit(relax.op.add(acc, relax.const(np.asarray(comp, np.int32))),
                            var.name + "__zp")
        scale = (p.scale.astype(np.float64) / k).astype(np.float32)
        return self.finish(var, dequantize(acc, make_params(scale, 0, 1, "int32")),
                           var.name + "__dq")

    # ------------------------------------------------------------------ bias add
    def _add(self, var, call):
        for i in (0, 1):
            d = self.dq(call.args[i])
            if d is None or dtype_of(d[0]) != "int32" or self.const(d[0]) is not None:
                continue
            q, p = d
            if np.any(p.zp != 0):
                continue
            bias = self._bias(call.args[1 - i], p, shape_of(var))
            if bias is None:
                continue
            base, prev = q, None
            v = self.value_of(q)
            if op_name(v) == "relax.add":
                c = self.const(v.args[1])
                if c is not None and c.dtype == np.int32:
                    base, prev = v.args[0], c
            total = bias if prev is None else (prev.astype(np.int64) + bias)
            if np.abs(total).max(initial=0) >= 2 ** 31:
                raise _Reject("bias does not fit int32 at the accumulator's scale")
            acc = self.emit(relax.op.add(base, relax.const(np.asarray(total, np.int32))),
                            var.name)
            return self.finish(var, dequantize(acc, p), var.name + "__dq")
        return None

    def _bias(self, expr, p: QParams, out_shape):
        """The constant `expr` in units of the accumulator scale (int64 array shaped to
        broadcast against the output), or None if it is not a suitable constant."""
        rank = len(out_shape)
        d = self.dq(expr)
        exact = None
        if d is not None and self.const(d[0]) is not None and np.all(d[1].zp == 0):
            bq, pb = self.const(d[0]), d[1]
            if bq.dtype == np.int32:
                exact = (bq, pb)
            value = _dequant_np(bq, pb)
        else:
            value = self.const(expr)
        if value is None or not np.issubdtype(value.dtype, np.floating):
            return None
        if value.ndim > rank:
            return None
        value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        if any(vs not in (1, os) for vs, os in zip(value.shape, out_shape)):
            return None
        if p.per_tensor:
            s = np.float64(p.s)
        else:
            varying = [i for i, d_ in enumerate(value.shape) if d_ != 1]
            if any(i != p.axis for i in varying):
                return None
            shape = [1] * rank
            shape[p.axis] = -1
            s = p.scale.astype(np.float64).reshape(shape)
        if exact is not None:
            bq, pb = exact
            bs = pb.scale.astype(np.float64)
            bsv = bs if pb.per_tensor else bs.reshape(-1)
            sv = np.asarray(s, np.float64).reshape(-1)
            if bsv.size in (1, sv.size) and np.all(
                    np.abs(np.broadcast_to(bsv, sv.shape) - sv) <= _RELATIVE_SCALE_TOL * sv):
                return np.asarray(bq, np.int64).reshape(value.shape)
        return np.round(value.astype(np.float64) / s).astype(np.int64)


def _times(x, k: int):
    return x if k == 1 else relax.op.multiply(x, relax.const(np.int32(k)))


def _dequant_np(q, p: QParams):
    from .. import reference

    return reference.dequantize(q, p.scale, p.zp, p.axis)


def RealizeIntegerOps(ctx=None):
    @tvm.transform.module_pass(opt_level=0, name="qcompile.RealizeIntegerOps")
    def _pass(mod, _pc):
        return Realize(mod, ctx).result()

    return _pass
