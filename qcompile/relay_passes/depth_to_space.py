"""A conv's depth-to-space in the channel order, and at the point, where the x86 int8
regions move it cheapest.

Expects: a Relax module after the low-precision passes (before the x86 int8 dispatch).
A ConvTranspose with stride == kernel (DBNet's 2x upsampling heads) is imported as a conv
to O*kh*kw channels and a depth-to-space in CRD order
(frontend/converters/conv_transpose.py):

    y = conv2d(x, W)                                   # channel c = o*kh*kw + i*kw + j
    ... elementwise ops with per-channel constants (the conv's dequantize, a bias) ...
    r = reshape(y', (n, O, kh, kw, h, w))
    t = permute_dims(r, [0, 1, 4, 2, 5, 3])
    z = reshape(t, (n, O, h*kh, w*kw))                 # z[n, o, y*kh + i, x*kw + j]
    ... elementwise ops with per-channel constants (bias, batch norm, ReLU, quantize) ...

Guarantees, where O is a multiple of the regions' block L and every value between the conv
and the last op moved has one use:
* the conv's output channels are reordered to DCR order (channel (i*kw + j)*O + o: the
  weight's rows and the per-channel constants of the ops before the depth-to-space are
  permuted alike) and the depth-to-space becomes `reshape(n, kh, kw, O, h, w)`,
  `permute_dims([0, 3, 4, 1, 5, 2])`, `reshape(n, O, h*kh, w*kw)`: in NCHW[L]c an output
  block is then one input block, L lanes copied at once
  (`x86_int8_dispatch` `_depth_to_space`), where CRD order gathers every lane of an output
  block from another input channel;
* the elementwise ops after the depth-to-space whose other operands are constants per
  channel (or scalars) move before it, their constants repeated for the kh*kw positions;
  an inference `batch_norm` among them is decomposed first, into the ops and constants of
  TVM's `DecomposeOpsForInference` (`sqrt(var + eps)` in f32, as the build's constant
  folding computes it). The conv's fused epilogue then computes them and the quantize, and
  the depth-to-space moves u8 values instead of f32 ones (PP-OCRv4 det: 0.6 instead of
  2.4 MB each way).
Every output element is computed by the same operations on the same operands as before, only
stored elsewhere: the values are the same (the moved f32 ops now share a kernel with the
conv's dequantize, so LLVM's FP contraction could fuse a multiply and an add there, the
1-ulp caveat of docs/kernels.md "Numerics"; tests/test_kernels_x86.py and PP-OCRv4 det as a
whole are bit-identical to the build without the dispatch). Nothing else changes.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._common import BindingRewriter, fold_const, loose_shape, op_name, raw_attr

# elementwise ops whose non-data operands may be per-channel constants ([.., C, 1, 1])
_ELEMWISE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide",
             "relax.maximum", "relax.minimum", "relax.astype", "relax.round", "relax.clip",
             "relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.sqrt"}
# ops with scale / zero point / multiplier constants laid out along their `axis` attribute
_PER_AXIS = {"relax.dequantize", "relax.quantize", "qcompile.requantize"}
CRD = [0, 1, 4, 2, 5, 3]
DCR = [0, 3, 4, 1, 5, 2]


def _ints(v) -> list[int]:
    return [int(x) for x in v]


def _same(a, b) -> bool:
    return a is not None and b is not None and a.same_as(b)


def _pyval(v):
    v = v.value if hasattr(v, "value") else v
    return v.value if hasattr(v, "value") else v


@relax.expr_functor.mutator
class _Reorder(BindingRewriter):
    def __init__(self, mod, lanes: int):
        super().__init__(mod)
        self.lanes = lanes
        self.bound: dict = {}
        self.plan: dict = {}    # original var -> callable(var, value) -> new value / DONE
        self.pre = None         # the value before the depth-to-space being moved

    def begin_function(self, gv, func) -> bool:
        super().begin_function(gv, func)
        self.bound = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bound[b.var] = b.value
        for var, value in list(self.bound.items()):
            self._match(var, value)
        return bool(self.plan)

    # ------------------------------------------------------------------ matching
    def _single_use(self, var) -> bool:
        return isinstance(var, relax.DataflowVar) and len(self.uses.get(var, [])) == 1

    def _user(self, var):
        """The one binding that uses `var`, as (var, value), or None."""
        if not self._single_use(var):
            return None
        user = self.uses[var][0]   # its VarBinding (None: the function's result)
        return None if user is None else (user.var, user.value)

    def _data_operand(self, call):
        data = [a for a in call.args if isinstance(a, relax.Var)
                and fold_const(a, self.bound) is None]
        return data[0] if len(data) == 1 else None

    def _match(self, r1, value) -> None:
        if op_name(value) != "relax.reshape" or r1 in self.plan:
            return
        src = value.args[0]
        s_in, s_r1 = loose_shape(src), loose_shape(r1)
        if s_in is None or s_r1 is None or len(s_in) != 4 or len(s_r1) != 6:
            return
        n, c, h, w = s_in
        _, o, kh, kw, h2, w2 = s_r1
        if s_r1[0] != n or (h2, w2) != (h, w) or o * kh * kw != c or kh * kw < 2 \
                or o % self.lanes:
            return
        u = self._user(r1)
        if u is None or op_name(u[1]) != "relax.permute_dims" \
                or raw_attr(u[1], "axes") is None or _ints(raw_attr(u[1], "axes")) != CRD:
            return
        p = u[0]
        u = self._user(p)
        if u is None or op_name(u[1]) != "relax.reshape" \
                or loose_shape(u[0]) != (n, o, h * kh, w * kw):
            return
        r2 = u[0]
        # back from the reshape's input to the conv, through single-use elementwise ops
        chain, cur = [], src
        while True:
            if not isinstance(cur, relax.Var) or not self._single_use(cur):
                return
            val = self.bound.get(cur)
            name = op_name(val)
            if name == "relax.nn.conv2d":
                break
            if name not in _ELEMWISE and name not in _PER_AXIS:
                return
            nxt = self._data_operand(val)
            if nxt is None:
                return
            chain.append(cur)
            cur = nxt
        conv = self.bound[cur]
        w_const = fold_const(conv.args[1], self.bound)
        if (w_const is None or w_const.ndim != 4 or w_const.shape[0] != c
                or int(raw_attr(conv, "groups")) != 1
                or str(raw_attr(conv, "data_layout")) != "NCHW"
                or str(raw_attr(conv, "kernel_layout")) != "OIHW"
                or str(raw_attr(conv, "out_layout")) != "NCHW"):
            return
        # perm[new channel] = old channel: new (i*kw + j)*O + o <- old o*kh*kw + i*kw + j
        perm = np.arange(c).reshape(o, kh * kw).T.reshape(-1)
        plan = {cur: self._with_consts({1: relax.const(np.ascontiguousarray(w_const[perm]))})}
        for v in chain:
            consts = self._channel_consts(self.bound[v], c, lambda a, ax: np.take(a, perm, ax))
            if consts is None:
                return
            plan[v] = self._with_consts(consts)
        # forward from the depth-to-space, through ops that can move before it
        kk = kh * kw
        moved, cur = [], r2
        while True:
            u = self._user(cur)
            if u is None:
                break
            uvar, uval = u
            if op_name(uval) == "relax.nn.batch_norm":
                g = self._user(uvar)
                steps = self._batch_norm_steps(uval, cur, o, kk)
                if steps is None or g is None or not isinstance(g[1], relax.TupleGetItem) \
                        or int(g[1].index) != 0:
                    break
                moved += [(uvar, steps), (g[0], [])]
                cur = g[0]
                continue
            if op_name(uval) not in _ELEMWISE and op_name(uval) not in _PER_AXIS \
                    or not _same(self._data_operand(uval), cur):
                break
            consts = self._channel_consts(uval, o, lambda a, ax: np.concatenate([a] * kk, ax))
            if consts is None:
                break
            moved.append((uvar, (next(k for k, a in enumerate(uval.args) if _same(a, cur)),
                                 consts)))
            cur = uvar
        shape6 = (n, kh, kw, o, h, w)
        if not moved:
            plan[r1] = lambda var, val: relax.op.reshape(val.args[0], shape6)
            plan[p] = lambda var, val: relax.op.permute_dims(val.args[0], DCR)
        else:
            plan[r1] = self._start
            plan[p] = plan[r2] = lambda var, val: self.DONE
            last = moved[-1][0]
            for v, consts in moved:
                plan[v] = self._moved(consts, shape6 if v is last else None)
        self.plan.update(plan)

    def _channel_consts(self, call, c: int, relayout):
        """{argument index: constant relaid out by `relayout(array, channel axis)`} for the
        per-channel constants of `call` (scalars stay), or None when one is laid out along
        anything but the channels of a 4-D value."""
        name = op_name(call)
        out = {}
        for k, a in enumerate(call.args):
            if not isinstance(a, tvm.ir.expr.GenericConst) and (
                    not isinstance(a, relax.Expr)
                    or isinstance(a, (tvm.ir.expr.Constant, relax.ShapeExpr))):
                continue  # prim values (clip bounds), shapes
            v = fold_const(a, self.bound)
            if v is None or v.size == 1:
                continue
            if name in _PER_AXIS:
                if int(_pyval(raw_attr(call, "axis"))) not in (1, -3) or v.ndim != 1 \
                        or v.size != c:
                    return None
                out[k] = relax.const(np.ascontiguousarray(relayout(v, 0)))
            else:
                if v.ndim < 3 or v.ndim > 4 or v.shape[-3] != c or v.size != c:
                    return None
                out[k] = relax.const(np.ascontiguousarray(relayout(v, v.ndim - 3)))
        return out

    def _batch_norm_steps(self, call, data, o: int, kk: int):
        """[(op, [1, O*kk, 1, 1] constant)] of an inference batch norm along the channels, as
        `DecomposeOpsForInference` computes it, or None."""
        if not _same(call.args[0], data) or bool(raw_attr(call, "training")) \
                or int(_pyval(raw_attr(call, "axis"))) % 4 != 1:
            return None
        gamma, beta, mean, var = (fold_const(a, self.bound) for a in call.args[1:5])
        if any(v is None or v.size != o for v in (gamma, beta, mean, var)):
            return None
        eps = np.float32(float(_pyval(raw_attr(call, "epsilon"))))
        steps = [(relax.op.subtract, mean.astype(np.float32)),
                 (relax.op.divide, np.sqrt(var.astype(np.float32) + eps))]
        if bool(raw_attr(call, "scale")):
            steps.append((relax.op.multiply, gamma.astype(np.float32)))
        if bool(raw_attr(call, "center")):
            steps.append((relax.op.add, beta.astype(np.float32)))
        return [(op, np.tile(v.reshape(-1), kk).reshape(1, -1, 1, 1)) for op, v in steps]

    # ------------------------------------------------------------------ rewriting
    @staticmethod
    def _with_consts(consts: dict):
        def fn(var, val):
            args = [consts.get(k, a) for k, a in enumerate(val.args)]
            return relax.Call(val.op, args, val.attrs, val.ty_args)
        return fn

    def _start(self, var, val):
        self.pre = val.args[0]   # the conv side's value: the moved ops apply to it
        return self.DONE

    def _moved(self, consts, shape6):
        """The rewrite of a moved op: applied to the value before the depth-to-space; the
        last one is followed by the depth-to-space (bound under its name)."""
        def fn(var, val):
            if isinstance(consts, list):       # a batch norm's steps / its tuple's field 0
                y = self.pre
                for op, v in consts:
                    y = self.emit(op(y, relax.const(v)), var.name)
            else:                              # (the data operand's index, constants)
                data, cs = consts
                args = [self.pre if k == data else cs.get(k, a)
                        for k, a in enumerate(val.args)]
                y = self.emit(relax.Call(val.op, args, val.attrs, val.ty_args), var.name)
            self.pre = y
            if shape6 is None:
                return self.DONE
            r = self.emit(relax.op.reshape(y, shape6), var.name + "__d2s")
            t = self.emit(relax.op.permute_dims(r, DCR), var.name + "__d2s")
            n, kh, kw, o, h, w = shape6
            return relax.op.reshape(t, (n, o, h * kh, w * kw))
        return fn

    def rewrite(self, var, value):
        fn = self.plan.get(var)
        return None if fn is None else fn(var, value)


def reorder_depth_to_space(mod: tvm.IRModule, lanes: int) -> tvm.IRModule:
    """The module with each conv + CRD depth-to-space to O channels, O a multiple of
    `lanes` (the regions' block), in DCR order, moved after the per-channel elementwise ops
    that follow it (above). Others (O = 1: DBNet's last head) stay as they are: their
    depth-to-space leaves the region anyway."""
    return _Reorder(mod, lanes).result()
