"""Pass 2 — propagate dequantize through precision-preserving ops.

Expects: the output of pass 1 (dequantize(q, const scale, const zp) values).

Guarantees: for every binding `y = f(dequantize(q, P))` where `f` is in `RULES` and its rule
accepts `P`, `y` is rewritten into `dequantize(f_int(q), P')` — the integer op is bound under
`y`'s name (the ONNX node), the dequantize as `<y>__dq`. Exact by construction:
  reshape / flatten / expand_dims / squeeze / permute_dims  (per-axis: the axis follows; a
                           split axis where the parameters vary along one part; a merged
                           one only for a constant, the parameters repeated)
  max_pool2d               (NCHW; per tensor or per channel; positive scales: monotonic)
  strided_slice            (per tensor, or per-axis along an axis that is not sliced)
  pad (constant)           the pad value v becomes v / s + zp (must be an integer level)
  relu                     max(q, zp)   (`clip(q, zp, qmax)`, or `maximum` per channel)
  clip(a, b)               clip(q, a / s + zp, b / s + zp) when both are integer levels (or
                           outside the dtype range); otherwise left to pass 4, which folds
                           any clip into the requantize that follows
  concat                   every input dequantized with the same parameters
  split                    each output dequantized with the input's parameters
  multiply / divide by a positive scalar constant: no integer op, the scale absorbs it
A dequantize of a constant (weights, biases) is folded through the shape ops instead (the
result stays `dequantize(constant)`). Ops not in the table are left alone. Each rule is a
`can_transform` check (reason when not) apart from its `transform`, as in OpenVINO's LPT; a
refusal is reported (model.json `notes`) with the rule's reason. A concat of unequal
parameters is not refused here: pass 4 requantizes its inputs.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._common import (ZP_TOL, BindingRewriter, QParams, dequantize, dtype_of, eval_op, int_range,
                      ints, op_name, remap_axis, shape_of)


class Rule:
    """A precision-preserving op: `can_transform` (None or the reason why not), `params`
    (the output's quantization parameters) and `transform` (the integer op)."""

    def can_transform(self, rw, call, p: QParams):
        return None

    def params(self, rw, call, p: QParams) -> QParams:
        return p

    def transform(self, rw, call, q, p: QParams):
        return relax.Call(call.op, [q] + list(call.args[1:]), call.attrs)


class Reshape(Rule):
    """The per-channel axis follows a reshape that keeps it; one that splits it keeps
    per-axis parameters when they vary along only one of the parts (a 1x1 conv's
    `O*kh*kw` output channels with the scale of `O` reshaped to `[O, kh, kw]`: a
    ConvTranspose imported as conv + depth-to-space). A constant (weights) is also folded
    through a reshape that merges its axis with others: the parameters are repeated over
    the merged dimension (the same ConvTranspose's weight `[O, kh, kw, I]` -> `[O*kh*kw, I]`)."""

    def can_transform(self, rw, call, p):
        if p.per_tensor:
            return None
        if _reshaped_params(shape_of(call.args[0]), shape_of(call), p,
                            merge=_dequantizes_const(rw, call.args[0])) is None:
            return "per-channel parameters along an axis the reshape merges"
        return None

    def params(self, rw, call, p):
        if p.per_tensor:
            return p
        return _reshaped_params(shape_of(call.args[0]), shape_of(call), p,
                                merge=_dequantizes_const(rw, call.args[0]))


def _dequantizes_const(rw, expr) -> bool:
    d = rw.dq(expr)
    return d is not None and rw.const(d[0]) is not None


def _reshaped_params(in_shape, out_shape, p: QParams, merge: bool) -> QParams | None:
    """Per-axis parameters `p` of a value reshaped from `in_shape` to `out_shape`, or None.

    The dimensions around the axis are grouped into the smallest run of input dimensions
    whose product equals that of a run of output dimensions (the reshape maps the run onto
    the other, elementwise in row-major order). When the axis is the run's only non-unit
    input dimension (a split), the parameters broadcast over the run and reshaped to the
    output run must vary along at most one output dimension (then per-axis along it). A run
    that merges the axis with other dimensions is taken only when `merge` (a constant being
    folded) and the output run is a single dimension (per-axis along it, the parameters
    repeated)."""
    axis = remap_axis(in_shape, out_shape, p.axis)
    if axis is not None:
        return p.with_(axis=axis)
    if in_shape is None or out_shape is None:
        return None
    in_shape, out_shape = [int(d) for d in in_shape], [int(d) for d in out_shape]
    pin = [int(np.prod(in_shape[:k], dtype=np.int64)) for k in range(len(in_shape) + 1)]
    pout = [int(np.prod(out_shape[:k], dtype=np.int64)) for k in range(len(out_shape) + 1)]
    bounds = set(pin) & set(pout)
    a = max(k for k in range(p.axis + 1) if pin[k] in bounds)
    b = min(k for k in range(p.axis + 1, len(in_shape) + 1) if pin[k] in bounds)
    c = max(k for k in range(len(out_shape) + 1) if pout[k] == pin[a])
    d = min(k for k in range(c, len(out_shape) + 1) if pout[k] == pin[b])
    group_in, group_out = in_shape[a:b], out_shape[c:d]
    merges = any(dim != 1 for k, dim in enumerate(group_in) if k != p.axis - a)
    if not group_out or (merges and not merge) \
            or int(np.prod(group_out, dtype=np.int64)) > 1 << 16:
        return None
    bshape = [1] * len(group_in)
    bshape[p.axis - a] = -1
    # scale and zero point side by side, broadcast over the run and laid out as the output
    both = np.stack([np.broadcast_to(v.astype(np.float64).reshape(bshape), group_in)
                     for v in (p.scale, p.zp)], -1).reshape(group_out + [2])
    varying = [j for j in range(len(group_out))
               if not np.all(both == np.take(both, [0], axis=j))]
    if len(varying) <= 1:
        j = varying[0] if varying else 0
        idx = tuple(slice(None) if k == j else 0 for k in range(len(group_out)))
        vals = both[idx]
        return p.with_(scale=vals[:, 0].astype(np.float32),
                       zp=vals[:, 1].astype(p.zp.dtype), axis=c + j)
    if merge and len(group_out) == 1:
        flat = both.reshape(-1, 2)
        return p.with_(scale=flat[:, 0].astype(np.float32),
                       zp=flat[:, 1].astype(p.zp.dtype), axis=c)
    return None


class Permute(Rule):
    def params(self, rw, call, p):
        if p.per_tensor:
            return p
        axes = call.attrs.axes
        n = len(shape_of(call.args[0]))
        axes = list(range(n))[::-1] if axes is None else ints(axes)
        return p.with_(axis=axes.index(p.axis))


class MaxPool(Rule):
    def can_transform(self, rw, call, p):
        if str(call.attrs.layout) != "NCHW" or str(call.attrs.out_layout) != "NCHW":
            return "max_pool2d layout is not NCHW"
        if not p.per_tensor and p.axis != 1:
            return "per-axis parameters not along channels"
        if np.any(p.scale <= 0):
            return "non-positive scale"
        return None


class StridedSlice(Rule):
    def can_transform(self, rw, call, p):
        if p.per_tensor:
            return None
        axes = [int(a) % len(shape_of(call.args[0])) for a in _prims(call.args[1])]
        return "slices the per-channel axis" if p.axis in axes else None


class Pad(Rule):
    def _level(self, call, p):
        v = float(call.attrs.pad_value)
        lv = v / p.s + p.z
        return lv

    def can_transform(self, rw, call, p):
        if str(call.attrs.pad_mode) != "constant":
            return f"pad mode {call.attrs.pad_mode}"
        if not p.per_tensor:
            return "per-channel parameters"
        lv = self._level(call, p)
        lo, hi = int_range(p.dtype)
        if abs(lv - round(lv)) > ZP_TOL or not lo <= round(lv) <= hi:
            return f"pad value {float(call.attrs.pad_value):g} is not a quantization level"
        return None

    def transform(self, rw, call, q, p):
        return relax.op.nn.pad(q, ints(call.attrs.pad_width), pad_mode="constant",
                               pad_value=float(round(self._level(call, p))))


class Relu(Rule):
    def can_transform(self, rw, call, p):
        return "non-positive scale" if np.any(p.scale <= 0) else None

    def transform(self, rw, call, q, p):
        lo, hi = int_range(dtype_of(q))
        if p.per_tensor or p.uniform_zp() is not None:
            z = p.z if p.per_tensor else p.uniform_zp()
            return relax.op.clip(q, relax.prim_value(max(z, lo)), relax.prim_value(hi))
        shape = [1] * len(shape_of(q))
        shape[p.axis] = -1
        return relax.op.maximum(q, relax.const(p.zp.reshape(shape).astype(dtype_of(q))))


class Clip(Rule):
    def _levels(self, call, p):
        a, b = (float(_prim(x)) for x in call.args[1:3])
        return a / p.s + p.z, b / p.s + p.z

    def can_transform(self, rw, call, p):
        if not p.per_tensor or p.s <= 0:
            return "per-channel parameters"
        lo, hi = int_range(p.dtype)
        for lv in self._levels(call, p):
            if lo <= lv <= hi and abs(lv - round(lv)) > ZP_TOL:
                return "clip bound is not a quantization level"
        return None

    def transform(self, rw, call, q, p):
        lo, hi = int_range(dtype_of(q))
        a, b = self._levels(call, p)
        a = lo if a < lo else int(round(a))
        b = hi if b > hi else int(round(b))
        return relax.op.clip(q, relax.prim_value(max(a, lo)), relax.prim_value(min(b, hi)))


class ScaleByConstant(Rule):
    """`dequantize(q, s) * c` (or `/ c`) with a positive scalar constant: `dequantize(q, s*c)`."""

    def _c(self, rw, call):
        c = rw.fconst(call.args[1])
        if c is None or c.size != 1:
            return None
        c = float(np.asarray(c).reshape(()))
        return c if call.op.name == "relax.multiply" else 1.0 / c

    def can_transform(self, rw, call, p):
        c = self._c(rw, call)
        if c is None or not c > 0 or not np.isfinite(c):
            return "not a positive scalar constant"
        return None

    def params(self, rw, call, p):
        return p.with_(scale=(p.scale.astype(np.float64) * self._c(rw, call)).astype(np.float32))

    def transform(self, rw, call, q, p):
        return None   # no integer op


RULES: dict[str, Rule] = {
    "relax.reshape": Reshape(), "relax.flatten": Reshape(), "relax.expand_dims": Reshape(),
    "relax.squeeze": Reshape(), "relax.permute_dims": Permute(),
    "relax.nn.max_pool2d": MaxPool(), "relax.strided_slice": StridedSlice(),
    "relax.nn.pad": Pad(), "relax.nn.relu": Relu(), "relax.clip": Clip(),
    "relax.multiply": ScaleByConstant(), "relax.divide": ScaleByConstant(),
}
# shape ops through which a dequantized constant is folded (weights, biases)
CONST_FOLD = {"relax.reshape", "relax.flatten", "relax.expand_dims", "relax.squeeze",
              "relax.permute_dims"}


def _prim(x):
    v = x.value if hasattr(x, "value") else x
    return v.value if hasattr(v, "value") else v


def _prims(x):
    if isinstance(x, relax.Tuple):
        return [_prim(f) for f in x.fields]
    if isinstance(x, relax.ShapeExpr):
        return [int(v) for v in x.values]
    return ints(x)


class PropagateBase(BindingRewriter):
    """Applies `rules` (a subset of RULES) to single-dequantize-input ops."""

    def __init__(self, mod, ctx, rules: dict[str, Rule] | None = None,
                 int32_too: bool = True):
        super().__init__(mod, ctx)
        self.rules = RULES if rules is None else rules
        self.int32_too = int32_too

    def rewrite(self, var, value):
        name = op_name(value)
        if name == "relax.concat":
            return self._concat(var, value)
        if name == "relax.split":
            return self._split(var, value)
        rule = self.rules.get(name)
        if rule is None or not value.args:
            return None
        d = self.dq(value.args[0])
        if d is None:
            return None
        q, p = d
        if not self.int32_too and dtype_of(q) == "int32" and not isinstance(rule, ScaleByConstant):
            return None
        qc = self.const(q)
        if qc is not None:
            if name not in CONST_FOLD:
                return None
            folded = eval_op(value, [qc] + [None] * (len(value.args) - 1))
            if folded is None or self._refused(var, name, rule.can_transform(self, value, p)):
                return None
            return dequantize(relax.const(np.ascontiguousarray(folded)),
                              rule.params(self, value, p))
        if self._refused(var, name, rule.can_transform(self, value, p)):
            return None
        p2 = rule.params(self, value, p)
        new = rule.transform(self, value, q, p)
        if new is None:
            return dequantize(q, p2)
        qv = self.emit(new, var.name)
        return self.finish(var, dequantize(qv, p2), var.name + "__dq")

    def _refused(self, var, name: str, why: str | None) -> bool:
        """Record a rule's reason for not taking an op (model.json `notes`); True if refused."""
        if why is not None:
            self.report(var, name.split(".")[-1], f"dequantize not propagated through it: {why}")
        return why is not None

    def _fields(self, expr):
        t = self.value_of(expr)
        return list(t.fields) if isinstance(t, relax.Tuple) else None

    def _concat(self, var, call):
        fields = self._fields(call.args[0])
        if not fields:
            return None
        ds = [self.dq(f) for f in fields]
        if any(d is None for d in ds):
            return None
        p0 = ds[0][1]
        if not all(d[1].same(p0) for d in ds) or any(self.const(d[0]) is not None for d in ds):
            return None
        axis = int(call.attrs.axis)
        if not p0.per_tensor and p0.axis == axis % len(shape_of(call)):
            return None
        qv = self.emit(relax.op.concat([d[0] for d in ds], axis=axis), var.name)
        return self.finish(var, dequantize(qv, p0), var.name + "__dq")

    def _split(self, var, call):
        d = self.dq(call.args[0])
        if d is None or self.const(d[0]) is not None:
            return None
        q, p = d
        if self._refused(var, "split", "per-channel parameters along the split axis" if (
                not p.per_tensor and p.axis == int(call.attrs.axis) % len(shape_of(q))) else None):
            return None
        t = self.emit(relax.Call(call.op, [q], call.attrs), var.name)
        n = len(t.ty.fields)
        parts = [self.emit(dequantize(relax.TupleGetItem(t, i), p), f"{var.name}__dq{i}")
                 for i in range(n)]
        return self.finish(var, relax.Tuple(parts), var.name + "__dq")


@relax.expr_functor.mutator
class Propagate(PropagateBase):
    pass


def PropagateDequantize(ctx=None, int32_too: bool = True):
    @tvm.transform.module_pass(opt_level=0, name="qcompile.PropagateDequantize")
    def _pass(mod, _pc):
        return Propagate(mod, ctx, int32_too=int32_too).result()

    return _pass
