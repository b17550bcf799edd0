"""ONNX `QuantizeLinear` / `DequantizeLinear` (opset 10-23), replacing TVM's converters.

Per-tensor parameters (shape [] or [1]) become 0-d constants; per-axis parameters keep their
vector and a non-negative `axis`. A missing zero point is 0 (uint8 for QuantizeLinear, the
input's dtype for DequantizeLinear), as ONNX says. Blocked quantization and float8 are not
supported (ModelError naming the node), and so is a constant scale that is 0, negative, NaN
or Inf.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..registry import register_converter
from ._util import check_finite_constant, const_value, node_name, rank_of, scalarize

_DTYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32"}


def _axis(attr, x, scale, name: str) -> int:
    rank = rank_of(x)
    axis = int(attr.get("axis", 1))
    if rank == 0:
        return 0
    if rank <= 1 and axis == 1:
        axis = 0
    if not -rank <= axis < rank:
        raise ModelError(f"node {name!r}: axis {axis} is out of range for a rank-{rank} input")
    axis %= rank
    sv = const_value(scale)
    n = int(np.prod([int(d) for d in scale.ty.shape])) if scale.ty.shape is not None else 1
    if sv is not None:
        n = sv.size
    if n > 1 and int(x.ty.shape[axis]) != n:
        raise ModelError(f"node {name!r}: {n} scales along axis {axis}, but that axis of the "
                         f"input has {int(x.ty.shape[axis])} elements")
    return axis


def _check(attr, name):
    if int(attr.get("block_size", 0) or 0) != 0:
        raise ModelError(f"node {name!r}: blocked quantization (block_size) is not supported")


def _check_scale(scale, name: str, op: str) -> None:
    """A constant scale must be finite and positive: 0 divides by zero, NaN / Inf turn
    every value into NaN, a negative one flips the order the integer ops rely on."""
    sv = const_value(scale)
    if sv is None:
        return
    sv = np.asarray(sv, np.float64)
    bad = ~np.isfinite(sv) | (sv <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        what = "zero" if sv.ravel()[i] == 0 else ("not finite" if not np.isfinite(
            sv.ravel()[i]) else "negative")
        where = f" (element {i} of {sv.size})" if sv.size > 1 else ""
        raise ModelError(f"{op} {name!r}: scale {sv.ravel()[i]:g}{where} is {what}; a "
                         "quantization scale must be a finite positive number. Re-export or "
                         "re-quantize the model (e.g. `qcompile quantize` on the fp32 model)")


def _operands(inputs, attr, op: str):
    """(node name, x, scale, zero point or None) after the checks both converters share."""
    name = node_name(attr)
    _check(attr, name)
    x, scale = inputs[0], scalarize(inputs[1])
    _check_scale(scale, name, op)
    if op == "QuantizeLinear":
        check_finite_constant(x, name, op)
    zp = scalarize(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    return name, x, scale, zp


@register_converter("QuantizeLinear")
class QuantizeLinear:
    @classmethod
    def get_converter(cls, opset):
        return cls.convert

    @staticmethod
    def convert(bb, inputs, attr, params):
        from tvm import relax

        name, x, scale, zp = _operands(inputs, attr, "QuantizeLinear")
        out_dtype = str(zp.ty.dtype) if zp is not None else _DTYPES.get(
            int(attr.get("output_dtype", 0) or 0), "uint8")
        if out_dtype not in ("uint8", "int8", "uint16", "int16", "int32"):
            raise ModelError(f"QuantizeLinear {name!r}: output type {out_dtype} is not supported")
        if zp is None:
            zp = relax.const(np.zeros((), out_dtype))
        if str(x.ty.dtype) != "float32":
            x = relax.op.astype(x, "float32")
        axis = _axis(attr, x, scale, name)
        return relax.op.quantize(x, scale, zp, axis=axis, out_dtype=out_dtype)


@register_converter("DequantizeLinear")
class DequantizeLinear:
    @classmethod
    def get_converter(cls, opset):
        return cls.convert

    @staticmethod
    def convert(bb, inputs, attr, params):
        from tvm import relax

        name, x, scale, zp = _operands(inputs, attr, "DequantizeLinear")
        if zp is None:
            zp = relax.const(np.zeros((), str(x.ty.dtype)))
        if str(scale.ty.dtype) != "float32":
            sv = const_value(scale)
            scale = relax.const(sv.astype(np.float32)) if sv is not None else \
                relax.op.astype(scale, "float32")
        axis = _axis(attr, x, scale, name)
        return relax.op.dequantize(x, scale, zp, axis=axis, out_dtype="float32")
