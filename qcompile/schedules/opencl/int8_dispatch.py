"""OpenCL int8 dispatch: integer-IR ops -> the OpenCL int8 templates (`call_te`).

Expects: a Relax module after the low-precision passes (docs/integer-ir.md):
`R.nn.conv2d(u8 NCHW, s8 constant OIHW, out_dtype="int32")` (groups 1, or depthwise with
groups = C = OC), optionally fed by `R.nn.pad(x, pad_value=zp)` on H/W;
`R.matmul(u8, s8 constant [K, N], out_dtype="int32")` (any leading dims on the left);
`R.matmul(u8 [.., M, K], s8 activation [.., K, N], out_dtype="int32")` with the same
leading (batch) dims, the right operand possibly a `permute_dims` swapping its last two
axes. Constants may be `relax.const` or an
`astype` / `reshape` / `permute_dims` of one.

Guarantees:
* every matched op is replaced by a `call_te` of `compute.conv2d_int8` / `depthwise_int8` /
  `dense_int8` / `batch_matmul_int8` with the weight packed once, here, into a constant;
  the op's var keeps its name and type (NCHW / row-major s32), so the elementwise epilogue
  after it (bias, `qcompile.requantize` as legalized, activation, residual add) is unchanged
  and FuseOps fuses it into the template's function, where `schedule.py` runs it from the
  accumulators;
* a zero-point `R.nn.pad` feeding a conv is folded into the conv's in-kernel padding (when
  the conv's own padding is 0, or the pad value is 0); the pad binding dies if unused;
* the layout of graph tensors is never changed: no layout-transform kernels between layers;
* anything else is left alone (still exact: TVM's generic s32 code, scheduled by the dlight
  GPU rules) and reported in `report` with the reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from . import compute
from ...relay_passes._common import DataflowMutator, fold_const
from ...relay_passes._common import loose_dtype as _dtype, loose_shape as _shape
from ...relay_passes._common import pyval as _pyval, raw_attr as _attr


class _Skip(Exception):
    pass


@relax.expr_functor.mutator
class _Dispatcher(DataflowMutator):
    def __init__(self, mod, report: list):
        super().__init__(mod)
        self.report = report
        self.bound: dict[Any, Any] = {}

    def visit_var_binding_(self, binding):
        var, value = binding.var, binding.value
        self.bound[var] = value
        new = None
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            name = value.op.name
            try:
                if name == "relax.nn.conv2d":
                    new = self._conv2d(var, value)
                elif name == "relax.matmul":
                    new = self._matmul(var, value)
            except _Skip as why:
                self.report.append({"var": var.name, "op": name, "left_alone": str(why)})
                new = None
        if new is None:
            super().visit_var_binding_(binding)
            return
        self.bind_under(var, new)

    # ------------------------------------------------------------------ helpers
    def _const(self, expr) -> np.ndarray | None:
        return fold_const(expr, self.bound)

    def _emit(self, expr, hint):
        return self.builder_.emit(expr, name_hint=hint)

    def _fold_pad(self, data, conv_pad):
        """(source, padding (t, l, b, r), pad value) for a conv's data."""
        if isinstance(data, relax.Var) and data in self.bound:
            v = self.bound[data]
            if (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                    and v.op.name == "relax.nn.pad"
                    and str(_attr(v, "pad_mode", "constant")) == "constant"):
                widths = [int(w) for w in _attr(v, "pad_width")]
                value = float(_pyval(_attr(v, "pad_value", 0.0)))
                if (len(widths) == 8 and not any(widths[:4]) and value == int(value)
                        and 0 <= value <= 255):
                    pads = (widths[4], widths[6], widths[5], widths[7])
                    if not any(conv_pad):
                        return v.args[0], pads, int(value)
                    if value == 0:
                        return v.args[0], tuple(a + b for a, b in zip(pads, conv_pad)), 0
        return data, conv_pad, 0

    # ---------------------------------------------------------------- handlers
    def _conv2d(self, var, call):
        data, weight = call.args
        if (_dtype(data) != "uint8" or str(_attr(call, "out_dtype")) != "int32"
                or str(_attr(call, "data_layout")) != "NCHW"
                or str(_attr(call, "kernel_layout")) != "OIHW"
                or str(_attr(call, "out_layout")) != "NCHW"):
            return None
        w = self._const(weight)
        if w is None or w.dtype != np.int8:
            raise _Skip("conv2d weight is not an int8 constant")
        groups = int(_attr(call, "groups"))
        strides = tuple(int(s) for s in _attr(call, "strides"))
        dilation = tuple(int(d) for d in _attr(call, "dilation"))
        pad = [int(p) for p in _attr(call, "padding")]
        if len(pad) == 2:
            pad = [pad[0], pad[1], pad[0], pad[1]]
        # relax conv2d padding is (top, left, bottom, right)
        src, padding, pad_value = self._fold_pad(data, tuple(pad))
        shape = _shape(src)
        if shape is None or len(shape) != 4:
            raise _Skip("conv2d needs a static NCHW shape")
        n, c, h, wd = shape
        oc = w.shape[0]
        if groups == 1:
            packed = compute.pack_conv_weight(w)
            expr = self.builder_.call_te(
                compute.conv2d_int8, self._use(src), relax.const(packed), strides, padding,
                dilation, pad_value, primfunc_name_hint="qconv2d")
            self.report.append({"var": var.name, "op": "conv2d", "kernel": "conv2d_int8",
                                "intrinsic": "opencl.dot4"})
            return expr
        if groups == c == oc and w.shape[1] == 1:
            expr = self.builder_.call_te(
                compute.depthwise_int8, self._use(src),
                relax.const(compute.pack_depthwise_weight(w)), strides, padding, dilation,
                pad_value, primfunc_name_hint="qdepthwise")
            self.report.append({"var": var.name, "op": "conv2d", "kernel": "depthwise_int8",
                                "intrinsic": None})
            return expr
        raise _Skip(f"grouped conv2d (groups={groups}) has no OpenCL int8 template")

    def _use(self, expr):
        return self.visit_expr(expr)

    def _matmul(self, var, call):
        a, b = call.args
        if _dtype(a) != "uint8" or str(_attr(call, "out_dtype")) != "int32":
            return None
        if _dtype(b) != "int8":
            raise _Skip("matmul right operand is not int8")
        ashape, bshape, oshape = _shape(a), _shape(b), _shape(var)
        if ashape is None or bshape is None or oshape is None or len(ashape) < 2:
            raise _Skip("matmul needs static shapes")
        w = self._const(b)
        if w is not None:
            if w.ndim != 2:
                raise _Skip("constant matmul weight is not 2-D")
            expr = self.builder_.call_te(compute.dense_int8, self._use(a),
                                         relax.const(compute.pack_dense_weight(w)),
                                         primfunc_name_hint="qdense")
            self.report.append({"var": var.name, "op": "matmul", "kernel": "dense_int8",
                                "intrinsic": "opencl.dot4"})
            return expr
        transpose_b, src = False, b
        if isinstance(b, relax.Var) and b in self.bound:
            bv = self.bound[b]
            if (isinstance(bv, relax.Call) and isinstance(bv.op, tvm.ir.Op)
                    and bv.op.name == "relax.permute_dims"):
                axes = _attr(bv, "axes")
                nd = len(bshape)
                if axes is not None and [int(x) for x in axes] == (list(range(nd - 2))
                                                                   + [nd - 1, nd - 2]):
                    src, transpose_b = bv.args[0], True
        if len(bshape) != len(ashape) or tuple(bshape[:-2]) != tuple(ashape[:-2]):
            raise _Skip("matmul operands' batch dims differ (broadcasting)")
        expr = self.builder_.call_te(compute.batch_matmul_int8, self._use(a), self._use(src),
                                     transpose_b, primfunc_name_hint="qbatch_matmul")
        self.report.append({"var": var.name, "op": "matmul", "kernel": "batch_matmul_int8",
                            "intrinsic": "opencl.dot4"})
        return expr


def dispatch(mod: tvm.IRModule, spec, report: list | None = None) -> tvm.IRModule:
    """Rewrite the integer ops of `mod` into the OpenCL int8 templates for `spec`."""
    if spec.family != "opencl":
        raise ValueError(f"OpenCL int8 dispatch called for target {spec.name!r} "
                         f"(family {spec.family!r})")
    if spec.int8.dot_product != "opencl.dot4":
        raise ValueError(f"target {spec.name!r} asks for int8 dot product "
                         f"{spec.int8.dot_product!r}; the OpenCL templates implement "
                         "'opencl.dot4'")
    out = _Dispatcher(mod, report if report is not None else []).run()
    return relax.transform.DeadCodeElimination()(out)
