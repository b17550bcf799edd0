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
* every matched op gets a `report` entry (kernel, intrinsic, `variant` "dot4" or "scalar"
  for depthwise, as model.json `int8_kernels` counts them); anything else is left alone
  (still exact: TVM's generic s32 code, scheduled by the dlight GPU rules) and reported in
  `report` with the reason (`left_alone`), which the build turns into a fallback.
"""
from __future__ import annotations

import tvm
from tvm import relax

from . import compute
from ...relay_passes._common import loose_shape as _shape
from ...relay_passes._common import pyval as _pyval, raw_attr as _attr
from ...relay_passes.int8_dispatch_base import Int8Dispatcher, Skip, check_target


@relax.expr_functor.mutator
class _Dispatcher(Int8Dispatcher):
    def visit_var_binding_(self, binding):
        var, value = binding.var, binding.value
        self.remember(var, value)
        new = self.handle(var, value, {"relax.nn.conv2d": self._conv2d,
                                       "relax.matmul": self._matmul}.get)
        if new is None:
            super().visit_var_binding_(binding)
            return
        self.bind_under(var, new)

    # ------------------------------------------------------------------ helpers
    def _fold_pad(self, data, conv_pad):
        """(source, padding (t, l, b, r), pad value) for a conv's data."""
        v = self.bound_call(data, "relax.nn.pad")
        if v is not None and str(_attr(v, "pad_mode", "constant")) == "constant":
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

    def _use(self, expr):
        return self.visit_expr(expr)

    # ---------------------------------------------------------------- handlers
    def _conv2d(self, var, call):
        m = self.match_conv2d(call)
        if m is None:
            return None
        w = m.weight
        src, padding, pad_value = self._fold_pad(m.data, m.padding)
        shape = _shape(src)
        if shape is None or len(shape) != 4:
            raise Skip("conv2d needs a static NCHW shape")
        c, oc = shape[1], w.shape[0]
        if m.groups == 1:
            packed = compute.pack_conv_weight(w)
            expr = self.builder_.call_te(
                compute.conv2d_int8, self._use(src), relax.const(packed), m.strides, padding,
                m.dilation, pad_value, primfunc_name_hint="qconv2d")
            self.report.append({"var": var.name, "op": "conv2d", "kernel": "conv2d_int8",
                                "intrinsic": "opencl.dot4", "variant": "dot4"})
            return expr
        if m.groups == c == oc and w.shape[1] == 1:
            expr = self.builder_.call_te(
                compute.depthwise_int8, self._use(src),
                relax.const(compute.pack_depthwise_weight(w)), m.strides, padding, m.dilation,
                pad_value, primfunc_name_hint="qdepthwise")
            self.report.append({"var": var.name, "op": "conv2d", "kernel": "depthwise_int8",
                                "intrinsic": None, "variant": "scalar"})
            return expr
        raise Skip(f"grouped conv2d (groups={m.groups}) has no OpenCL int8 template")

    def _matmul(self, var, call):
        m = self.match_matmul(call)
        if m is None:
            return None
        if _shape(var) is None:
            raise Skip("matmul needs static shapes")
        if m.weight is not None:
            expr = self.builder_.call_te(compute.dense_int8, self._use(m.a),
                                         relax.const(compute.pack_dense_weight(m.weight)),
                                         primfunc_name_hint="qdense")
            self.report.append({"var": var.name, "op": "matmul", "kernel": "dense_int8",
                                "intrinsic": "opencl.dot4", "variant": "dot4"})
            return expr
        expr = self.builder_.call_te(compute.batch_matmul_int8, self._use(m.a),
                                     self._use(m.rhs), m.transpose_b,
                                     primfunc_name_hint="qbatch_matmul")
        self.report.append({"var": var.name, "op": "matmul", "kernel": "batch_matmul_int8",
                            "intrinsic": "opencl.dot4", "variant": "dot4"})
        return expr


def dispatch(mod: tvm.IRModule, spec, report: list | None = None) -> tvm.IRModule:
    """Rewrite the integer ops of `mod` into the OpenCL int8 templates for `spec`."""
    check_target(spec, "opencl", ("opencl.dot4",))
    out = _Dispatcher(mod, report).run()
    return relax.transform.DeadCodeElimination()(out)
