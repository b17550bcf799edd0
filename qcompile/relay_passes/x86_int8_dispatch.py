"""x86 int8 dispatch: integer ops -> packed, tensorized qcompile kernels (`call_te`).

Expects: a Relax module after the low-precision passes (docs/integer-ir.md): integer ops
`R.nn.conv2d(u8 NCHW, s8 const OIHW, out_dtype="int32")` (groups 1, or depthwise groups=C),
`R.matmul(u8, s8 const [K, N], out_dtype="int32")`, `R.matmul(u8, s8 activation,
out_dtype="int32")` (optionally with a `permute_dims` swapping the last two axes of the right
operand), followed by elementwise epilogues (`add`, `multiply`, `astype`, `round`, `clip`,
..., `qcompile.requantize`, `qcompile.qadd`), `R.nn.pad` with the zero point, `max_pool2d`.
Constants must be `relax.const` (or `permute_dims`/`reshape`/`astype` of one).

Guarantees:
* every matched conv / matmul becomes a `call_tir` to a TE compute from
  `qcompile.schedules.x86.compute` whose main block is annotated with its MetaSchedule rule
  and tensor intrinsic; the intrinsic is chosen from `TargetSpec.int8` (`dot_product`,
  `saturation`, `lanes`), never from the target's name. On targets whose `vpmaddubsw`
  saturates, the exact widened variant is used unless the constant weights provably cannot
  saturate an s16 pair sum (then the faster saturating one, when `allow_saturating_fast`);
* weights (and per-channel constants of epilogues) are packed once, here, into constants;
* convs and the elementwise ops / pads / max-pools between them form NCHW[L]c regions: data
  is transformed (`region_ops.to_nchwc` / `from_nchwc`) only where a value enters or leaves
  a region, so consecutive int8 convs stay blocked. `R.nn.pad` with a constant value that
  feeds a conv is folded into the conv (padding with the zero point). `qcompile.requantize`
  inside a region is expanded into the same elementwise math; `qcompile.qadd` becomes
  `region_ops.qadd` (FMA-fenced, bit-exact to the reference); the integer global average
  pool (`region_ops.spatial_sum`), nearest resizes (a quantize after one moved before it)
  and a ConvTranspose's depth-to-space (`relay_passes/depth_to_space.py` first puts it in
  DCR order) stay in the region too;
* bindings it does not rewrite are untouched; a rewritten value keeps its var (name) where
  its type is unchanged, otherwise the NCHW value leaving the region is bound to a var of
  the original name;
* `report` (if given) receives one dict per rewritten op: var, op, kernel, intrinsic,
  variant, exact, and one per integer op left alone with the reason.

After it, the build fuses (`qcompile.codegen.fuse_with_map`) and schedules
(`qcompile.codegen.compile_fused`); kernel tests use `qcompile.schedules.x86.lower.lower`
(fusion + default schedules or a database).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax

from qcompile import ops as qops
from qcompile.schedules.x86 import compute, intrinsics, packing, region_ops, winograd
from qcompile.schedules.x86.schedule import register_rules
from ._common import loose_dtype as _dtype, loose_shape as _shape
from .depth_to_space import reorder_depth_to_space
from .int8_dispatch_base import Int8Dispatcher, Skip, check_target
from ._common import pyval as _pyval, raw_attr as _attr

__all__ = ["dispatch", "X86Int8Dispatch"]

_ELEMWISE = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.astype", "relax.round", "relax.clip", "relax.nn.relu",
    "relax.floor", "relax.ceil", "relax.negative", "relax.abs",
    # f32 activations between a conv's dequantize and the next quantize (SiLU, GELU, ...)
    "relax.sigmoid", "relax.tanh", "relax.exp", "relax.erf", "relax.sqrt",
}
_QDQ = {"relax.quantize", "relax.dequantize"}
_RESIZE = "relax.image.resize2d"
_REQUANTIZE = "qcompile.requantize"
_QADD = "qcompile.qadd"


@dataclasses.dataclass
class _Blocked:
    """A value inside an int8 region: `var` is NCHW[lanes]c with `channels` real channels."""

    var: relax.Expr
    channels: int
    lanes: int
    nchw_shape: tuple[int, ...]


@relax.expr_functor.mutator
class _Dispatcher(Int8Dispatcher):
    def __init__(self, mod: tvm.IRModule, spec, allow_fast: bool, report: list | None,
                 exact_variant: str | None = None, allow_winograd: bool = True):
        super().__init__(mod, report)
        self.exact_variant = exact_variant
        self.allow_winograd = allow_winograd
        self.spec = spec
        self.cap = spec.int8
        self.lanes = int(spec.int8.lanes)
        self.allow_fast = allow_fast
        self.region: dict[Any, _Blocked] = {}       # original var -> blocked value
        self.deferred: dict[Any, Callable] = {}      # original var -> emits its NCHW value
        self.deferred_pad: dict[Any, tuple] = {}     # pad var -> (input, (t, l, b, r), value)
        self.entry_cache: dict[tuple, relax.Expr] = {}
        # requantize var -> (its rounded f32 value, out_zp, clip_min, clip_max), for qadd
        self.rounded: dict[Any, tuple] = {}
        # split var -> (its blocked tuple, [(channels, nchw shape)] per part)
        self.region_tuples: dict[Any, tuple] = {}
        # the first two steps of a DCR depth-to-space of a region value (reshape to 6-D,
        # permute): var -> (blocked input, kh, kw, O)
        self.pending_d2s: dict[Any, tuple] = {}
        self.uses: dict[Any, int] = {}

    # ------------------------------------------------------------------ module driver
    def begin_function(self, gv, func) -> bool:
        self.uses = _use_counts(func)
        return True

    def visit_dataflow_block_(self, block):
        try:
            return super().visit_dataflow_block_(block)
        finally:
            self._end_block()

    def visit_binding_block_(self, block):
        try:
            return super().visit_binding_block_(block)
        finally:
            self._end_block()

    def _end_block(self):
        # blocked values are DataflowVars of the block just left; every value used after
        # it (a block output) was materialized when it was bound
        self.region.clear()
        self.deferred.clear()
        self.deferred_pad.clear()
        self.entry_cache.clear()
        self.rounded.clear()
        self.region_tuples.clear()
        self.pending_d2s.clear()

    # ---------------------------------------------------------------------- bindings
    def visit_var_binding_(self, binding):
        var, value = binding.var, binding.value
        self.remember(var, value)
        if isinstance(value, relax.TupleGetItem):
            handled = self._tuple_item(var, value)
        else:
            handled = bool(self.handle(var, value, self._handler))
        if handled:
            if not isinstance(var, relax.DataflowVar) or not self.in_dataflow:
                self._materialize(var)  # block outputs must exist as NCHW values now
            return
        self._materialize_free_vars(value)
        super().visit_var_binding_(binding)

    def _handler(self, name: str):
        if name in _ELEMWISE or name in _QDQ or name in (_REQUANTIZE, _QADD,
                                                        "relax.nn.max_pool2d", _RESIZE):
            return self._elementwise
        return {"relax.nn.conv2d": self._conv2d, "relax.matmul": self._matmul,
                "relax.nn.pad": self._pad, "relax.split": self._split,
                "relax.concat": self._concat, "relax.sum": self._spatial_sum,
                "relax.reshape": self._depth_to_space,
                "relax.permute_dims": self._depth_to_space}.get(name)

    def _materialize_free_vars(self, expr):
        for v in relax.analysis.free_vars(expr):
            self._materialize(v)

    def _materialize(self, var) -> None:
        """Bind the original (NCHW) value of a region/deferred var before its first use."""
        fn = self.deferred.pop(var, None)
        if fn is None:
            return
        self.bind_under(var, fn())

    def _use(self, expr):
        """The rewritten expression for an argument used outside any region."""
        if isinstance(expr, relax.Var):
            self._materialize(expr)
        return self.visit_expr(expr)

    def _note(self, var, op, info, kernel=None, **extra):
        self.report.append({"var": var.name, "op": op, "kernel": kernel,
                            "intrinsic": info.name if info else None,
                            "variant": info.variant if info else "vector",
                            "exact": info.exact if info else True, **extra})

    # ------------------------------------------------------------------ region entry
    def _blocked_input(self, expr, cb: int, pad_value: int = 0):
        """`expr` (NCHW) as NCHW[cb]c: the region value if it is one with that block,
        otherwise a border `to_nchwc` (cached per value and block)."""
        if isinstance(expr, relax.Var) and expr in self.region:
            blk = self.region[expr]
            if blk.lanes == cb:
                return blk.var, blk
            src = self._use(expr)
        else:
            src = self._use(expr)
        key = (src, cb, pad_value)
        if key not in self.entry_cache:
            self.entry_cache[key] = self.builder_.emit(
                self.builder_.call_te(region_ops.to_nchwc, src, cb, pad_value,
                                      primfunc_name_hint="to_nchwc"),
                name_hint=f"{getattr(expr, 'name', 'x')}_nchw{cb}c")
        return self.entry_cache[key], None

    def _record(self, var, new_expr, channels: int, nchw_shape) -> None:
        new_var = self.builder_.emit(new_expr, name_hint=f"{var.name}_nchw{self.lanes}c")
        blk = _Blocked(new_var, channels, self.lanes, tuple(nchw_shape))
        self.region[var] = blk
        self.deferred[var] = lambda b=blk: self.builder_.call_te(
            region_ops.from_nchwc, b.var, b.channels, primfunc_name_hint="from_nchwc")

    # ---------------------------------------------------------------------- handlers
    def _pad(self, var, call) -> bool:
        if _dtype(call) != "uint8" or str(_attr(call, "pad_mode", "constant")) != "constant":
            return False
        widths = [int(w) for w in _attr(call, "pad_width")]
        if len(widths) != 8 or any(widths[:4]):
            return False
        value = float(_pyval(_attr(call, "pad_value", 0.0)))
        if value != int(value) or not 0 <= value <= 255:
            return False
        src = call.args[0]
        # (top, left, bottom, right) as the conv attribute orders them
        self.deferred_pad[var] = (src, (widths[4], widths[6], widths[5], widths[7]), int(value))
        self.deferred[var] = lambda: relax.Call(
            call.op, [self._use(src)], call.attrs, call.ty_args)
        return True

    def _conv_data(self, data):
        """(source expr, extra padding, pad value) for a conv's data, folding a deferred pad."""
        if isinstance(data, relax.Var) and data in self.deferred_pad:
            src, pads, value = self.deferred_pad[data]
            return src, pads, value
        return data, (0, 0, 0, 0), 0

    def _conv2d(self, var, call) -> bool:
        m = self.match_conv2d(call)
        if m is None:
            return False
        data, w, groups, strides, dilation, conv_pad = (m.data, m.weight, m.groups, m.strides,
                                                        m.dilation, m.padding)
        src, extra, pad_value = self._conv_data(data)
        if any(extra) and any(conv_pad):
            if pad_value != 0:
                src, extra, pad_value = data, (0, 0, 0, 0), 0
            else:
                extra = tuple(a + b for a, b in zip(extra, conv_pad))
                conv_pad = (0, 0, 0, 0)
        padding = extra if any(extra) else conv_pad
        in_shape, out_shape = _shape(src), _shape(var)
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            raise Skip("conv2d needs static NCHW shapes")
        ic = in_shape[1]
        oc = w.shape[0]
        lanes = self.lanes
        if any(padding):  # the zero point as a kernel input (records match any calibration)
            pad_value = relax.const(np.array([pad_value], np.int32))
        if groups == 1:
            cb = packing.data_block(ic, lanes)
            in_region = isinstance(src, relax.Var) and src in self.region
            if in_region:
                cb = self.region[src].lanes
            blocks = packing.conv_blocks(w, lanes, cb)
            wino = self._winograd(w, strides, dilation, out_shape, self._safe(blocks))
            if wino is not None and not isinstance(wino, str):
                packed = winograd.pack_weights(w, wino, cb)
                xin, _ = self._blocked_input(src, cb)
                expr = self.builder_.call_te(
                    winograd.conv2d_nchwc, xin, relax.const(packed), padding, pad_value,
                    wino.name, primfunc_name_hint="qconv2d_winograd")
                self._record(var, expr, oc, out_shape)
                self._note(var, "conv2d", wino, kernel="conv2d_winograd_nchwc")
                return True
            # the s16-activation kernel pays a widening copy of its input: free when the
            # kernel copies it for padding anyway, cheap when each input is reused often
            info = self._select(blocks, intrinsics.s16_activations_pay_off(
                any(padding), oc * w.shape[2] * w.shape[3]))
            packed = packing.pack_conv(w, info, cb, blocks)
            xin, _ = self._blocked_input(src, cb)
            expr = self.builder_.call_te(
                compute.conv2d_nchwc, xin, relax.const(packed), strides, padding, dilation,
                pad_value, info.name, primfunc_name_hint="qconv2d_nchwc")
            self._record(var, expr, oc, out_shape)
            self._note(var, "conv2d", info, kernel="conv2d_nchwc",
                       **({"winograd_refused": wino} if isinstance(wino, str) else {}))
            return True
        if groups == ic == oc and w.shape[1] == 1:
            xin, _ = self._blocked_input(src, lanes)
            kern = packing.pack_depthwise(w, lanes)
            info = intrinsics.depthwise(self.cap.dot_product)
            expr = self.builder_.call_te(
                compute.depthwise_nchwc, xin, relax.const(kern), strides, padding, dilation,
                pad_value, info.name, primfunc_name_hint="qdepthwise_nchwc")
            self._record(var, expr, oc, out_shape)
            self._note(var, "conv2d", info, kernel="depthwise_nchwc")
            return True
        raise Skip(f"grouped conv2d (groups={groups}) has no int8 kernel")

    def _winograd(self, w, strides, dilation, out_shape, fast_direct: bool):
        """The widen16 intrinsic when this conv runs as exact Winograd F(2x2, 3x3) on this
        target (`[int8] winograd`), None when the target or the geometry has no Winograd,
        or the reason (a str) it was refused for a 3x3 stride-1 conv.

        Against the exact widened direct kernel (8-bit weights) Winograd's s16 GEMM runs at
        the same instruction rate with 16/36 of the multiplications: ResNet-50 NNCF model,
        Zen 3, 2 threads, ~0.5x the time on its 3x3 layers. Against the saturating pair
        (`fast_direct`: weights proven safe for it, e.g. 7-bit) it wins by less (0.77-0.85x
        warm), and its s16 weights (3.6x the int8 bytes) stream from memory in a whole
        model: only layers whose transformed weights stay small
        (`winograd.FAST_MAX_WEIGHT_BYTES`) take it then."""
        if (not self.allow_winograd or self.cap.winograd != winograd.KIND
                or not winograd.applies(w.shape[2:], strides, dilation, 1)):
            return None
        u_bytes = winograd.weight_bytes(w)
        if fast_direct and u_bytes > winograd.FAST_MAX_WEIGHT_BYTES:
            return (f"the weights fit the saturating vpmaddubsw pair exactly and the "
                    f"Winograd weights would be {u_bytes >> 10} KiB > "
                    f"{winograd.FAST_MAX_WEIGHT_BYTES >> 10} KiB: the direct kernel is faster")
        tiles = -(-out_shape[2] // 2) * -(-out_shape[3] // 2)
        if tiles < winograd.MIN_TILES:
            return (f"{tiles} output tiles < {winograd.MIN_TILES}: its s16 weights (3.6x the "
                    "int8 bytes) are reused too little")
        bound = winograd.exact_bound(w)
        if bound > winograd.S32_MAX:
            return (f"partial sums could reach {bound} > 2^31-1 for these weights (not exact "
                    "in s32)")
        return intrinsics.get(self.cap.dot_product, "widen16")

    def _safe(self, blocks: np.ndarray | None) -> bool:
        if blocks is None or not self.allow_fast or self.cap.saturation != "widen":
            return False
        return intrinsics.weights_fit_s16_pairs(blocks)

    def _select(self, blocks, s16_activations: bool) -> intrinsics.DotIntrin:
        return intrinsics.select(self.cap, self._safe(blocks), s16_activations,
                                 self.exact_variant)

    def _matmul(self, var, call) -> bool:
        m = self.match_matmul(call, rhs_2d_broadcasts=True)
        if m is None:
            return False
        a, ashape, bshape, w = m.a, m.ashape, m.bshape, m.weight
        if w is not None:
            k, n = w.shape
            blocks = packing.dense_blocks(w, self.lanes)
            info = self._select(blocks, intrinsics.s16_activations_pay_off(k % 4 != 0, n))
            packed = packing.pack_dense(w, info, blocks)
            expr = self.builder_.call_te(compute.dense_packed, self._use(a), relax.const(packed),
                                         info.name, n, primfunc_name_hint="qdense")
            self._note(var, "matmul", info, kernel="dense")
        else:
            src, transpose_b = m.rhs, m.transpose_b
            n = bshape[-2] if transpose_b else bshape[-1]
            info = self._select(None, intrinsics.s16_activations_pay_off(
                ashape[-1] % 4 != 0, n))
            expr = self.builder_.call_te(compute.batch_matmul, self._use(a), self._use(src),
                                         info.name, transpose_b,
                                         primfunc_name_hint="qbatch_matmul")
            self._note(var, "matmul", info, kernel="batch_matmul")
        self.bind_under(var, expr)
        return True

    # ---------------------------------------------------------------- region ops
    def _region_arg(self, arg, ref: _Blocked):
        """An elementwise argument in the layout of `ref`, or None if it cannot follow."""
        # same shape, or per channel computed at run time (squeeze-excite gates): the
        # [N, C, 1, 1] layout broadcasts against NCHW[L]c as [N, C/L, 1, 1, L]
        follows = (ref.nchw_shape, (ref.nchw_shape[0], ref.channels, 1, 1))
        if isinstance(arg, relax.Var) and arg in self.region:
            blk = self.region[arg]
            if blk.channels == ref.channels and blk.lanes == ref.lanes \
                    and blk.nchw_shape in follows:
                return blk.var
            return None
        if isinstance(arg, tvm.ir.expr.GenericConst):
            pass
        elif not isinstance(arg, relax.Expr) or isinstance(
                arg, (tvm.ir.expr.Constant, relax.ShapeExpr)):
            return arg  # prim values (clip bounds), shapes
        val = self.const(arg)
        if val is not None:
            laid = packing.channel_const(val, ref.channels, ref.lanes)
            return None if laid is None else relax.const(laid)
        if _shape(arg) in follows:
            xin, _ = self._blocked_input(arg, ref.lanes)
            return xin
        return None

    def _elementwise(self, var, call) -> bool:
        blocked = [self.region[a] for a in call.args
                   if isinstance(a, relax.Var) and a in self.region]
        if not blocked:
            return False
        if call.op.name == "relax.quantize" and self._quantize_before_resize(var, call):
            return True
        # the operand of the output's shape leads (a broadcast gate may come first)
        ref = next((b for b in blocked if b.nchw_shape == _shape(var)), blocked[0])
        name = call.op.name
        # only the data follows the region: requantize's multiplier and quantize's /
        # dequantize's scale and zero point are laid out along their `axis` attribute,
        # resize's second argument is its output size
        conv_args = (call.args[:1] if name in (_REQUANTIZE, _RESIZE) or name in _QDQ
                     else call.args)
        args = [self._region_arg(a, ref) for a in conv_args]
        if any(a is None for a in args):
            return False
        if name == _REQUANTIZE:
            expr = self._requantize(call, args, ref)
        elif name == _QADD:
            expr = self._qadd(call, args, ref)
        elif name == "relax.nn.max_pool2d":
            expr = self._max_pool(call, args, ref)
        elif name in _QDQ:
            expr = self._qdq(call, args, ref)
        elif name == _RESIZE:
            expr = self._resize(call, args, ref)
        else:
            expr = relax.Call(call.op, args, call.attrs, call.ty_args)
        if expr is None:
            return False
        out_shape = _shape(var)
        if out_shape is None or len(out_shape) != 4:
            return False
        self._record(var, expr, ref.channels, out_shape)
        if name == _REQUANTIZE:
            self.rounded[var] = self._last_rounded
        return True

    def _requantize(self, call, args, ref):
        axis = int(_pyval(_attr(call, "axis", 1)))
        mult = self.const(call.args[1])
        if mult is None:
            return None
        if mult.size > 1:
            if axis not in (1, -3):
                return None
            mult = mult.reshape(1, -1, 1, 1)
        laid = packing.channel_const(mult.astype(np.float32), ref.channels, ref.lanes)
        if laid is None:
            return None
        out_zp = int(_pyval(_attr(call, "out_zp", 0)))
        out_dtype = str(_attr(call, "out_dtype", "uint8"))
        lo = int(_pyval(_attr(call, "clip_min", 0)))
        hi = int(_pyval(_attr(call, "clip_max", 255)))
        # zero point and clip bounds as [1,1,1,1,1] tensors (PrimFunc inputs, not immediates:
        # tuning records then match every calibration of the layer)
        zp, lo_c, hi_c = qops.param_consts([out_zp, lo, hi], 5)
        x = self.builder_.emit(relax.op.astype(args[0], "float32"))
        x = self.builder_.emit(relax.op.multiply(x, relax.const(laid)))
        # the rounded f32 value, for a qadd that takes it (dead code otherwise)
        self._last_rounded = (self.builder_.emit(relax.op.round(x)), out_zp, lo, hi)
        return self.builder_.call_te(region_ops.requantize_tail, x, zp, lo_c, hi_c, out_dtype,
                                     primfunc_name_hint="requantize")

    def _qdq(self, call, args, ref):
        """relax.quantize / dequantize with constant (per-tensor or per-channel along axis 1)
        scale and zero point, as `region_ops.quantize` / `dequantize`."""
        axis = int(_pyval(_attr(call, "axis", 1)))
        laid = []
        for arg, dt in ((call.args[1], np.float32), (call.args[2], np.int32)):
            v = self.const(arg)
            if v is None:
                return None
            v = np.asarray(v)
            if v.size > 1:
                if axis not in (1, -3):
                    return None
                v = v.reshape(1, -1, 1, 1)
            else:
                v = v.reshape(())
            lv = packing.channel_const(v.astype(dt), ref.channels, ref.lanes)
            if lv is None:
                return None
            laid.append(relax.const(lv))
        out_dtype = str(_attr(call, "out_dtype"))
        if call.op.name == "relax.dequantize":
            if out_dtype != "float32":
                return None
            return self.builder_.call_te(region_ops.dequantize, args[0], *laid,
                                         primfunc_name_hint="dequantize")
        if out_dtype not in ("uint8", "int8") or _dtype(call.args[0]) != "float32":
            return None
        return self.builder_.call_te(region_ops.quantize, args[0], *laid, out_dtype,
                                     primfunc_name_hint="quantize")

    def _resize(self, call, args, ref, same_dtype: bool = False):
        """relax.image.resize2d of an NCHW region value, in NCHW[L]c (TOPI's resize indexes
        blocked layouts; nearest copies, linear interpolates per element: the same values).
        `same_dtype`: the output keeps the dtype of `args[0]` (the call's out_dtype is
        dropped)."""
        a = call.attrs
        size = call.args[1]
        if str(a.layout) != "NCHW" or not isinstance(size, relax.ShapeExpr):
            return None
        factors = _nearest_power_of_two_upsample(call, ref.nchw_shape)
        if factors is not None and (same_dtype or a.out_dtype is None or not str(a.out_dtype)
                                    or str(a.out_dtype) == _dtype(call.args[0])):
            return self.builder_.call_te(region_ops.upsample_nearest, args[0], *factors,
                                         primfunc_name_hint="upsample_nearest")
        return relax.op.image.resize2d(
            args[0], [int(v) for v in size.values], roi=[float(r) for r in a.roi],
            layout=f"NCHW{ref.lanes}c", method=str(a.method),
            coordinate_transformation_mode=str(a.coordinate_transformation_mode),
            rounding_method=str(a.rounding_method), cubic_alpha=float(a.cubic_alpha),
            cubic_exclude=int(a.cubic_exclude), extrapolation_value=float(a.extrapolation_value),
            out_dtype=None if same_dtype or a.out_dtype is None or not str(a.out_dtype)
            else a.out_dtype)

    def _quantize_before_resize(self, var, call) -> bool:
        """`quantize(resize2d(x, nearest))` with the resize used only there: the quantize
        on x, then the resize of the integers. Nearest-neighbour resize only selects
        elements (no out-of-image value outside `tf_crop_and_resize`), so both orders give
        the same values; this one quantizes (a division per element) and moves 1 byte per
        element at the source resolution instead of 4 at the output's (PP-OCRv4 det's FPN
        upsampling of 24 and 96 channels by 2x to 8x before its quantizes)."""
        src = call.args[0]
        rs = self.bound_call(src, _RESIZE)
        if rs is None or self.uses.get(src, 0) != 1:
            return False
        a = rs.attrs
        if str(a.method) != "nearest_neighbor" \
                or str(a.coordinate_transformation_mode) == "tf_crop_and_resize" \
                or (a.out_dtype is not None and str(a.out_dtype) not in ("", "float32")):
            return False
        x = rs.args[0]
        if not (isinstance(x, relax.Var) and x in self.region) or _dtype(x) != "float32":
            return False
        blk = self.region[x]
        q = self._qdq(call, [blk.var], blk)
        if q is None:
            return False
        qv = self.builder_.emit(q, name_hint=f"{var.name}_lowres_nchw{blk.lanes}c")
        expr = self._resize(rs, [qv], blk, same_dtype=True)
        if expr is None:
            return False
        self._record(var, expr, blk.channels, _shape(var))
        return True

    def _split(self, var, call) -> bool:
        """A channel split of a region value at multiples of the block: a blocked split."""
        x = call.args[0]
        if not (isinstance(x, relax.Var) and x in self.region):
            return False
        blk = self.region[x]
        if int(_pyval(_attr(call, "axis"))) % 4 != 1:
            return False
        ios = _attr(call, "indices_or_sections")
        if isinstance(ios, (tvm.tirx.IntImm, int)):
            n = int(ios)
            if blk.channels % n:
                return False
            idx = [blk.channels // n * k for k in range(1, n)]
        else:
            idx = [int(i) for i in ios]
        if not idx or any(i % blk.lanes or not 0 < i < blk.channels for i in idx):
            return False
        shapes = []
        for f in getattr(var.ty, "fields", None) or []:
            try:
                shapes.append(tuple(int(d) for d in f.shape))
            except (AttributeError, TypeError, ValueError):
                return False
        if len(shapes) != len(idx) + 1 or any(len(s) != 4 for s in shapes):
            return False
        bounds = [0, *idx, blk.channels]
        parts = [(bounds[k + 1] - bounds[k], shapes[k]) for k in range(len(shapes))]
        tv = self.builder_.emit(
            relax.op.split(blk.var, [i // blk.lanes for i in idx], axis=1),
            name_hint=f"{var.name}_nchw{blk.lanes}c")
        self.region_tuples[var] = (tv, parts)
        self.deferred[var] = lambda: relax.Call(call.op, [self._use(x)], call.attrs,
                                                call.ty_args)
        return True

    def _spatial_sum(self, var, call) -> bool:
        """An integer sum of a region value over H and W with keepdims (the global average
        pool of docs/integer-ir.md: `sum(int32(x))`): summed in NCHW[L]c to
        [N, C/L, 1, 1, L], which the squeeze-excite ops after it (offset, requantize, the
        1x1 convs on [N, C, 1, 1]) take in the region. Integer addition is exact in any
        order. Before, the value left the region (`from_nchwc` of the s32 map) and the
        NCHW sum reduced each channel serially (PP-OCRv4 det's 96 x 80 x 80 pool: ~0.7 ms
        of the two kernels against OpenVINO's 0.09 ms)."""
        x = call.args[0]
        if not (isinstance(x, relax.Var) and x in self.region):
            return False
        blk = self.region[x]
        if _dtype(call) not in ("int32", "int64") or _dtype(x) != _dtype(call):
            return False
        axes = _attr(call, "axis")
        if axes is None or not bool(_attr(call, "keepdims")):
            return False
        if sorted(int(a) % 4 for a in axes) != [2, 3] or len(blk.nchw_shape) != 4:
            return False
        out_shape = _shape(var)
        if out_shape is None or tuple(out_shape) != (blk.nchw_shape[0], blk.nchw_shape[1], 1, 1):
            return False
        # sum(astype(q, int32)) of a u8 / s8 region value: the cast goes inside the sum
        cast = self.bound_call(x, "relax.astype")
        if cast is not None and isinstance(cast.args[0], relax.Var) \
                and cast.args[0] in self.region and _dtype(cast.args[0]) in ("uint8", "int8") \
                and self.region[cast.args[0]].lanes == blk.lanes:
            blk = self.region[cast.args[0]]
        expr = self.builder_.call_te(region_ops.spatial_sum, blk.var, _dtype(call),
                                     primfunc_name_hint="spatial_sum")
        self._record(var, expr, blk.channels, out_shape)
        return True

    def _depth_to_space(self, var, call) -> bool:
        """`reshape(x, (n, kh, kw, O, h, w))`, `permute_dims([0, 3, 4, 1, 5, 2])`,
        `reshape((n, O, h*kh, w*kw))` of a region value x with O a multiple of the block
        (the DCR order `relay_passes/depth_to_space.py` gives a ConvTranspose's conv):
        `region_ops.depth_to_space`, whole blocks copied. The first two steps are deferred
        (bound as they were if the third does not follow)."""
        from .depth_to_space import DCR

        x = call.args[0]
        if not isinstance(x, relax.Var):
            return False
        out_shape = _shape(var)
        if call.op.name == "relax.permute_dims":
            axes = _attr(call, "axes")
            if x not in self.pending_d2s or axes is None or [int(a) for a in axes] != DCR:
                return False
            self.pending_d2s[var] = self.pending_d2s[x]
        elif x in self.region:
            blk = self.region[x]
            if out_shape is None or len(out_shape) != 6 or len(blk.nchw_shape) != 4:
                return False
            n, kh, kw, o, h, w = out_shape
            if (blk.nchw_shape != (n, kh * kw * o, h, w) or blk.channels != kh * kw * o
                    or o % blk.lanes or kh * kw < 2):
                return False
            self.pending_d2s[var] = (blk, kh, kw, o)
        elif x in self.pending_d2s:
            blk, kh, kw, o = self.pending_d2s[x]
            n, _, h, w = blk.nchw_shape
            if out_shape is None or tuple(out_shape) != (n, o, h * kh, w * kw):
                return False
            expr = self.builder_.call_te(region_ops.depth_to_space, blk.var, kh, kw,
                                         primfunc_name_hint="depth_to_space")
            self._record(var, expr, o, out_shape)
            return True
        else:
            return False
        self.deferred[var] = lambda: relax.Call(call.op, [self._use(x)] + list(call.args[1:]),
                                                call.attrs, call.ty_args)
        return True

    def _tuple_item(self, var, item) -> bool:
        tup = item.tuple_value
        if not (isinstance(tup, relax.Var) and tup in self.region_tuples):
            return False
        tv, parts = self.region_tuples[tup]
        channels, shape = parts[int(item.index)]
        self._record(var, relax.TupleGetItem(tv, int(item.index)), channels, shape)
        return True

    def _concat(self, var, call) -> bool:
        """A channel concat with a region value among its inputs, every input but the last a
        whole number of blocks: a blocked concat (the others enter through `to_nchwc`)."""
        tup = call.args[0]
        if isinstance(tup, relax.Var) and isinstance(self.bound.get(tup), relax.Tuple):
            tup = self.bound[tup]
        if not isinstance(tup, relax.Tuple) or int(_pyval(_attr(call, "axis"))) % 4 != 1:
            return False
        fields = list(tup.fields)
        if not any(isinstance(f, relax.Var) and f in self.region for f in fields):
            return False
        out_shape = _shape(var)
        chans = []
        for f in fields:
            if isinstance(f, relax.Var) and f in self.region:
                blk = self.region[f]
                if blk.lanes != self.lanes:
                    return False
                chans.append(blk.channels)
            else:
                shp = _shape(f)
                if shp is None or len(shp) != 4:
                    return False
                chans.append(shp[1])
        if out_shape is None or any(c % self.lanes for c in chans[:-1]):
            return False
        parts = [self._blocked_input(f, self.lanes)[0] for f in fields]
        self._record(var, relax.op.concat(parts, axis=1), sum(chans), out_shape)
        return True

    def _qadd(self, call, args, ref):
        a, b = args
        if _shape(a) != _shape(b):
            return None
        get = lambda k, d=0: _pyval(_attr(call, k, d))  # noqa: E731
        defaults = {"clip_min": 0, "clip_max": 255}
        p = {k: float(get(k, defaults.get(k, 0))) for k in qops.QADD_PARAMS}
        dtype = str(_attr(call, "out_dtype", "uint8"))
        rank = len(_shape(a))
        fused = self._requantized_operand(call, p)
        if fused is not None:
            (rounded, zp, lo, hi), other, swap = fused
            if swap:  # f32 addition commutes exactly: the requantized operand goes first
                p = {**p, "a_mult": p["b_mult"], "b_zp": p["a_zp"], "b_mult": p["a_mult"]}
            vals = [lo - zp, hi - zp, p["a_mult"], p["b_zp"], p["b_mult"], p["out_zp"],
                    p["clip_min"], p["clip_max"]]
            return self.builder_.call_te(
                region_ops.requantized_qadd, rounded, other, *qops.param_consts(vals, rank),
                dtype, primfunc_name_hint="qadd")
        params = qops.param_consts([p[k] for k in qops.QADD_PARAMS], rank)
        return self.builder_.call_te(region_ops.qadd, a, b, *params, dtype,
                                     primfunc_name_hint="qadd")

    def _requantized_operand(self, call, p):
        """((rounded, zp, lo, hi), other operand, swapped) when an operand of the qadd is
        a region requantize used only by it, with qadd's zero point equal to its out_zp."""
        for idx, zp_key in ((0, "a_zp"), (1, "b_zp")):
            src = call.args[idx]
            parts = self.rounded.get(src) if isinstance(src, relax.Var) else None
            if parts is None or self.uses.get(src, 0) != 1 or parts[1] != p[zp_key]:
                continue
            other = self._region_arg(call.args[1 - idx], self.region[src])
            if other is None or _shape(other) != _shape(parts[0]):
                continue
            return parts, other, idx == 1
        return None

    def _max_pool(self, call, args, ref):
        if str(_attr(call, "layout")) != "NCHW" or str(_attr(call, "out_layout")) != "NCHW":
            return None
        if not bool(_attr(call, "ceil_mode")):
            return self.builder_.call_te(
                compute.max_pool_nchwc, args[0], [int(x) for x in _attr(call, "pool_size")],
                [int(x) for x in _attr(call, "strides")],
                _pool_padding([int(x) for x in _attr(call, "padding")]),
                [int(x) for x in _attr(call, "dilation")], primfunc_name_hint="max_pool_nchwc")
        lay = f"NCHW{ref.lanes}c"
        return relax.op.nn.max_pool2d(
            args[0], [int(x) for x in _attr(call, "pool_size")],
            [int(x) for x in _attr(call, "strides")], [int(x) for x in _attr(call, "padding")],
            [int(x) for x in _attr(call, "dilation")], bool(_attr(call, "ceil_mode")),
            bool(_attr(call, "count_include_pad")), lay, lay)


def _nearest_power_of_two_upsample(call, in_shape) -> tuple[int, int] | None:
    """(ky, kx) when `call` (resize2d) is a nearest, asymmetric, floor upsampling of an NCHW
    `in_shape` by powers of two (<= 64, input sides <= 4096): TOPI then computes the source
    index as floor(y * (h / H) + 1e-5) in f32, which is exactly y // ky there (h / H is a
    power of two, the fraction of y * h / H is at most 1 - 1/ky, far from the next integer)."""
    a = call.attrs
    size = call.args[1]
    if (str(a.method) != "nearest_neighbor" or str(a.coordinate_transformation_mode)
            != "asymmetric" or str(a.rounding_method) != "floor" or len(in_shape) != 4):
        return None
    out_hw = [int(v) for v in size.values]
    factors = []
    for n_in, n_out in zip(in_shape[2:], out_hw):
        k = n_out // n_in
        if n_in > 4096 or k * n_in != n_out or k < 1 or k > 64 or k & (k - 1):
            return None
        factors.append(k)
    return None if factors == [1, 1] else tuple(factors)


def _use_counts(func: relax.Function) -> dict:
    """How many times each var is used in `func` (as an argument or a returned value)."""
    counts: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _pool_padding(p: list[int]) -> tuple[int, int, int, int]:
    """Relax pool padding ([all], [h, w] or [top, left, bottom, right]) -> (t, l, b, r)."""
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    return tuple(p)


def dispatch(mod: tvm.IRModule, spec, *, allow_saturating_fast: bool = True,
             report: list | None = None, exact_variant: str | None = None,
             winograd: bool = True) -> tvm.IRModule:
    """Rewrite the integer ops of `mod` into qcompile x86 int8 kernels for `spec`.

    allow_saturating_fast: on `saturation = "widen"` targets, use the saturating
    `vpmaddubsw` kernel where the constant weights provably cannot saturate.
    exact_variant: force "widen" or "widen16" for the exact kernels of those targets
    (default: chosen per op, see `intrinsics.select`).
    winograd: allow exact Winograd F(2x2, 3x3) for 3x3 stride-1 convs where the target's
    `[int8] winograd` says so (schedules/x86/winograd.py); False: direct kernels only."""
    check_target(spec, "x86")
    register_rules()
    # a ConvTranspose's depth-to-space in the order whose blocks copy whole (bit-identical)
    mod = reorder_depth_to_space(mod, int(spec.int8.lanes))
    out = _Dispatcher(mod, spec, allow_saturating_fast, report, exact_variant, winograd).run()
    return relax.transform.DeadCodeElimination()(out)


def X86Int8Dispatch(spec, allow_saturating_fast: bool = True, report: list | None = None,
                    exact_variant: str | None = None):
    """`dispatch` as a module pass."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.X86Int8Dispatch")
    def _pass(mod, _ctx):
        return dispatch(mod, spec, allow_saturating_fast=allow_saturating_fast, report=report,
                        exact_variant=exact_variant)

    return _pass
