"""ONNX `Clip` with constant (or absent) bounds -> `R.clip`, a precision-preserving op the
low-precision passes understand (TVM's converter emits TE maximum/minimum calls)."""
from __future__ import annotations

import math

import numpy as np

from ..registry import override_converter
from ._util import const_value


@override_converter("Clip")
def clip(bb, inputs, attr, opset, tvm):
    from tvm import relax

    x = inputs[0]
    if opset < 11:
        lo, hi = attr.get("min", -math.inf), attr.get("max", math.inf)
    else:
        bounds = []
        for i, default in ((1, -math.inf), (2, math.inf)):
            b = inputs[i] if len(inputs) > i else None
            if b is None:
                bounds.append(default)
                continue
            v = const_value(b)
            if v is None or v.size != 1:
                return None
            v = float(np.asarray(v).reshape(()))
            bounds.append(default if math.isnan(v) else v)
        lo, hi = bounds
    if not str(x.ty.dtype).startswith("float"):
        return None
    return relax.op.clip(x, relax.prim_value(float(lo)), relax.prim_value(float(hi)))
