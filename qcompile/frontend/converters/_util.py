"""Helpers shared by qcompile's converters."""
from __future__ import annotations

import numpy as np


def attr_str(v):
    """A string attribute as TVM's importer passes it (bytes) or a default (str), as str."""
    return v.decode() if isinstance(v, bytes) else v


def node_name(attr) -> str:
    return (attr.get("tvm_custom") or {}).get("name") or "<unnamed>"


def const_value(expr):
    """numpy value of a Relax constant input, or None."""
    import tvm
    from tvm import relax

    if isinstance(expr, tvm.ir.expr.GenericConst):
        return expr.value.numpy()
    return None


def rank_of(expr) -> int:
    return len(expr.ty.shape)


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def scalarize(expr):
    """A per-tensor quantization parameter of shape [1] (or [1, 1, ...]) as a 0-d constant."""
    from tvm import relax

    v = const_value(expr)
    if v is not None and v.size == 1 and v.ndim > 0:
        return relax.const(np.asarray(v).reshape(()), str(v.dtype))
    return expr


def check_finite_constant(expr, name: str, op: str) -> None:
    """A constant (weight) a quantizer quantizes must be finite: NaN / Inf have no level."""
    from ...errors import ModelError

    v = const_value(expr)
    if v is None or v.dtype.kind != "f":
        return
    bad = ~np.isfinite(v)
    if bad.any():
        raise ModelError(f"{op} {name!r}: its constant input holds {int(bad.sum())} NaN/Inf "
                         f"value(s) of {bad.size} (first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])}); they have no "
                         "quantization level. Fix the exported model's weights")
