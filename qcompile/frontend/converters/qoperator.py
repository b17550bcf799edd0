"""ONNX Runtime's QOperator ops.

`QLinearConv`, `QLinearMatMul`, `QLinearAdd`, `QLinearGlobalAveragePool` become the QDQ form
they stand for: `dequantize` of each quantized input -> the float op -> `quantize` with the
output's scale and zero point. The low-precision passes then realize them exactly as they
realize a QDQ model (one code path, one set of numerics). The int32 bias of QLinearConv is
`dequantize(B, x_scale * w_scale)`, which the conv realization recognises and adds as is.
The binding named after the node is the float op (the one the report classifies); the output
quantize is `<node>__q`.

`ConvInteger` / `MatMulInteger` have int32 outputs and no scales: they are emitted directly as
the integer IR of docs/integer-ir.md — `conv2d`/`matmul(x_u8, w_s8, out_dtype="int32")` plus
the zero-point term as an s32 constant (s8 data shifted to u8, +128, with the shift in that
constant) — when the weight is a constant whose `w - w_zp` fits int8 and the data zero point
is a constant; otherwise as exact int32 arithmetic (`astype` + `subtract` + int32 op).
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..registry import _original_convert_map, register_converter, sanitize
from ._util import const_value, node_name, scalarize


def _dq(x, scale, zp, axis=1):
    from tvm import relax

    scale = scalarize(scale)
    if zp is None:
        zp = relax.const(np.zeros((), str(x.ty.dtype)))
    zp = scalarize(zp)
    rank = len(x.ty.shape)
    sv = const_value(scale)
    if sv is None or sv.size == 1:
        axis = 0 if rank == 0 else min(axis, rank - 1)
    return relax.op.dequantize(x, scale, zp, axis=axis % max(rank, 1), out_dtype="float32")


def _q(x, scale, zp):
    from tvm import relax

    scale = scalarize(scale)
    if zp is None:
        zp = relax.const(np.zeros((), "uint8"))
    zp = scalarize(zp)
    return relax.op.quantize(x, scale, zp, axis=1 if len(x.ty.shape) > 1 else 0,
                             out_dtype=str(zp.ty.dtype))


def _emit_named(bb, expr, name):
    return bb.emit(bb.normalize(expr), name_hint=sanitize(name))


def _finish(bb, core, name, y_scale, y_zp):
    """Bind the float op under the node's name, return its quantized output var."""
    v = _emit_named(bb, core, name)
    return bb.emit(bb.normalize(_q(v, y_scale, y_zp)), name_hint=sanitize(name) + "__q")


class _Converter:
    @classmethod
    def get_converter(cls, opset):
        def convert(bb, inputs, attr, params):
            return cls.convert(bb, list(inputs), attr, params, opset)

        return convert


@register_converter("QLinearConv")
class QLinearConv(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        x, xs, xz, w, ws, wz, ys, yz = (inputs + [None] * 9)[:8]
        b = inputs[8] if len(inputs) > 8 else None
        xd = bb.emit(_dq(x, xs, xz))
        wd = bb.emit(_dq(w, ws, wz, axis=0))
        bd = None
        if b is not None:
            xsv, wsv = const_value(scalarize(xs)), const_value(scalarize(ws))
            if xsv is None or wsv is None:
                raise ModelError(f"QLinearConv {name!r}: non-constant scales with a bias")
            bscale = (np.float32(xsv) * wsv.astype(np.float32)).astype(np.float32)
            bd = bb.emit(relax.op.dequantize(b, relax.const(bscale.reshape(-1) if bscale.size > 1
                                                            else bscale.reshape(())),
                                             relax.const(np.zeros((), "int32")), axis=0))
        conv = _original_convert_map()["Conv"].get_converter(opset)(
            bb, [xd, wd, bd], dict(attr), params)
        return _finish(bb, conv, name, ys, yz)


@register_converter("QLinearMatMul")
class QLinearMatMul(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        a, as_, az, b, bs, bz, ys, yz = inputs[:8]
        ad = bb.emit(_dq(a, as_, az, axis=len(a.ty.shape) - 2))
        bd = bb.emit(_dq(b, bs, bz, axis=len(b.ty.shape) - 1))
        return _finish(bb, relax.op.matmul(ad, bd), name, ys, yz)


@register_converter("QLinearAdd")
class QLinearAdd(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        a, as_, az, b, bs, bz, cs, cz = (inputs + [None] * 8)[:8]
        ad = bb.emit(_dq(a, as_, az))
        bd = bb.emit(_dq(b, bs, bz))
        return _finish(bb, relax.op.add(ad, bd), name, cs, cz)


@register_converter("QLinearGlobalAveragePool")
class QLinearGlobalAveragePool(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        x, xs, xz, ys, yz = (inputs + [None] * 5)[:5]
        rank = len(x.ty.shape)
        channels_last = int(attr.get("channels_last", 0))
        axes = list(range(1, rank - 1)) if channels_last else list(range(2, rank))
        xd = bb.emit(_dq(x, xs, xz))
        return _finish(bb, relax.op.mean(xd, axis=axes, keepdims=True), name, ys, yz)


class _QLinearUnary(_Converter):
    """X, x_scale, x_zp, y_scale, y_zp (+ the float op's attributes) -> q(op(dq(X)))."""
    FLOAT_OP = ""

    @classmethod
    def convert(cls, bb, inputs, attr, params, opset):
        name = node_name(attr)
        x, xs, xz, ys, yz = (inputs + [None] * 5)[:5]
        attr = dict(attr)
        if int(attr.pop("channels_last", 0) or 0):
            raise ModelError(f"{cls.__name__} {name!r}: channels_last is not supported")
        attr.pop("opset", None)
        xd = bb.emit(_dq(x, xs, xz))
        core = _original_convert_map()[cls.FLOAT_OP].get_converter(
            max(opset, 13))(bb, [xd], attr, params)
        return _finish(bb, core, name, ys, yz)


def _qlinear_unary(op_type, float_op):
    cls = type(op_type, (_QLinearUnary,), {"FLOAT_OP": float_op})
    register_converter(op_type)(cls)
    return cls


for _op, _f in (("QLinearSoftmax", "Softmax"), ("QLinearSigmoid", "Sigmoid"),
                ("QLinearLeakyRelu", "LeakyRelu"), ("QLinearAveragePool", "AveragePool")):
    _qlinear_unary(_op, _f)


@register_converter("QLinearMul")
class QLinearMul(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        a, as_, az, b, bs, bz, cs, cz = (inputs + [None] * 8)[:8]
        ad, bd = bb.emit(_dq(a, as_, az)), bb.emit(_dq(b, bs, bz))
        return _finish(bb, relax.op.multiply(ad, bd), name, cs, cz)


@register_converter("QLinearConcat")
class QLinearConcat(_Converter):
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input."""

    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        ys, yz = inputs[0], inputs[1]
        rest = inputs[2:]
        parts = [bb.emit(_dq(rest[i], rest[i + 1], rest[i + 2])) for i in range(0, len(rest), 3)]
        return _finish(bb, relax.op.concat(parts, axis=int(attr.get("axis", 0))), name, ys, yz)


# ------------------------------------------------------------------ ConvInteger / MatMulInteger
def _zp_value(zp):
    if zp is None:
        return np.zeros((), np.int64)
    v = const_value(zp)
    return None if v is None else v.astype(np.int64)


def _u8_data(bb, x, xz):
    """(data as uint8, its zero point): int8 data is shifted by +128 (exactly)."""
    from tvm import relax

    if str(x.ty.dtype) == "uint8":
        return x, xz
    if str(x.ty.dtype) != "int8":
        return None, None
    shifted = relax.op.astype(relax.op.add(relax.op.astype(x, "int16"),
                                           relax.const(np.int16(128))), "uint8")
    return bb.emit(shifted), xz + 128


def _exact_int32(x, zp, channel_axis: int | None = None):
    """x - zp in int32; a per-channel zp (1-D, one per output channel) is laid along
    channel_axis (ONNX's weight zero point of ConvInteger is per output channel, axis 0)."""
    from tvm import relax

    y = relax.op.astype(x, "int32")
    if zp is not None:
        z = relax.op.astype(zp, "int32")
        rank = len(x.ty.shape)
        if channel_axis is not None and len(zp.ty.shape) == 1 and rank > 1:
            shape = [1] * rank
            shape[channel_axis] = -1
            z = relax.op.reshape(z, shape)
        y = relax.op.subtract(y, z)
    return y


@register_converter("ConvInteger")
class ConvInteger(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        x, w = inputs[0], inputs[1]
        xzp = inputs[2] if len(inputs) > 2 else None
        wzp = inputs[3] if len(inputs) > 3 else None
        wv, wz, xz = const_value(w), _zp_value(wzp), _zp_value(xzp)
        fast = wv is not None and wz is not None and xz is not None and xz.size == 1
        if fast:
            wz_b = wz.reshape(-1, *([1] * (wv.ndim - 1))) if wz.size > 1 else wz
            wi = wv.astype(np.int64) - wz_b
            fast = wi.min(initial=0) >= -128 and wi.max(initial=0) <= 127
        if fast:
            xu, xzu = _u8_data(bb, x, int(xz.reshape(())))
            fast = xu is not None
        attr = dict(attr)
        if attr.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ModelError(f"ConvInteger {name!r}: auto_pad is not supported; use explicit pads")
        if len(w.ty.shape) != 4:
            raise ModelError(f"ConvInteger {name!r}: only 2-D convolutions are supported")
        pads = list(attr.get("pads", [0] * 4))
        strides = list(attr.get("strides", [1, 1]))
        dil = list(attr.get("dilations", [1, 1]))
        groups = int(attr.get("group", 1))
        conv_pad = [pads[0], pads[1], pads[2], pads[3]]     # (top, left, bottom, right)

        def conv2d(data, weight, padding):
            return relax.op.nn.conv2d(data, weight, strides, padding, dil, groups, "NCHW",
                                      "OIHW", "NCHW", "int32")

        if not fast:
            return _emit_named(bb, conv2d(bb.emit(_exact_int32(x, xzp)),
                                          bb.emit(_exact_int32(w, wzp, 0)), conv_pad), name)
        if any(pads) and xzu != 0:
            xu = bb.emit(relax.op.nn.pad(xu, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]],
                                         pad_value=float(xzu)))
            conv_pad = [0, 0, 0, 0]
        conv = conv2d(xu, relax.const(wi.astype(np.int8)), conv_pad)
        comp = -xzu * wi.reshape(wi.shape[0], -1).sum(axis=1)
        acc = _emit_named(bb, conv, name)
        if not np.any(comp):
            return acc
        return bb.emit(relax.op.add(acc, relax.const(comp.astype(np.int32).reshape(1, -1, 1, 1))),
                       name_hint=sanitize(name) + "__zp")


@register_converter("MatMulInteger")
class MatMulInteger(_Converter):
    @staticmethod
    def convert(bb, inputs, attr, params, opset):
        from tvm import relax

        name = node_name(attr)
        a, b = inputs[0], inputs[1]
        azp = inputs[2] if len(inputs) > 2 else None
        bzp = inputs[3] if len(inputs) > 3 else None
        bv, bz, az = const_value(b), _zp_value(bzp), _zp_value(azp)
        fast = bv is not None and bv.ndim == 2 and bz is not None and az is not None \
            and az.size == 1
        if fast:
            bi = bv.astype(np.int64) - (bz.reshape(1, -1) if bz.size > 1 else bz)
            fast = bi.min(initial=0) >= -128 and bi.max(initial=0) <= 127
        if fast:
            au, azu = _u8_data(bb, a, int(az.reshape(())))
            fast = au is not None
        if not fast:
            return _original_convert_map()["MatMulInteger"].get_converter(opset)(
                bb, inputs, attr, params)
        acc = _emit_named(bb, relax.op.matmul(au, relax.const(bi.astype(np.int8)),
                                              out_dtype="int32"), name)
        comp = -azu * bi.sum(axis=0)
        if not np.any(comp):
            return acc
        return bb.emit(relax.op.add(acc, relax.const(comp.astype(np.int32))),
                       name_hint=sanitize(name) + "__zp")
