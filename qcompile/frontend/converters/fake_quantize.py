"""OpenVINO `FakeQuantize` (domain org.openvinotoolkit as NNCF/OpenVINO write it, or the bare
op name) -> `qcompile.fake_quantize(x, il, ih, ol, oh, levels)`.

Constant ranges are validated here, where the node name is known: `input_low == input_high`
anywhere, a NaN or an infinity in any range, or `levels` outside 2..65536 raises
`QuantizationError` naming the node (docs/architecture.md, numerics contract).
"""
from __future__ import annotations

import numpy as np

from ...errors import QuantizationError
from ..registry import register_converter
from ._util import check_finite_constant, const_value, node_name


def check_ranges(name: str, il, ih, ol, oh, levels) -> None:
    if levels is None or not 2 <= int(levels) <= 65536:
        raise QuantizationError(f"FakeQuantize {name!r}: attribute 'levels' must be in "
                                f"2..65536 (got {levels}); fix the quantizer that wrote the model")
    vals = {"input_low": il, "input_high": ih, "output_low": ol, "output_high": oh}
    for key, v in vals.items():
        if v is None:
            continue
        arr = np.asarray(v, np.float64)
        if np.isnan(arr).any():
            raise QuantizationError(f"FakeQuantize {name!r}: {key} contains NaN; the quantizer "
                                    "saw no valid statistics for this tensor")
        if np.isinf(arr).any():
            raise QuantizationError(f"FakeQuantize {name!r}: {key} is infinite; the quantizer "
                                    "saw Inf in its statistics (clean the calibration data)")
    if il is not None and ih is not None:
        a, b = np.broadcast_arrays(np.asarray(il, np.float64), np.asarray(ih, np.float64))
        eq = a == b
        if eq.any():
            where = np.argwhere(eq)[:4].tolist() if eq.ndim else []
            raise QuantizationError(
                f"FakeQuantize {name!r}: input_low == input_high ({float(a[eq][0]):g}) at "
                f"{int(eq.sum())} of {eq.size} element(s){' ' + str(where) if where else ''}: "
                "an empty quantization range is invalid; re-calibrate or drop this quantizer")


@register_converter("FakeQuantize")
class FakeQuantize:
    @classmethod
    def get_converter(cls, opset):
        return cls.convert

    @staticmethod
    def convert(bb, inputs, attr, params):
        from tvm import relax

        from ... import ops

        name = node_name(attr)
        if len(inputs) != 5 or any(i is None for i in inputs):
            raise QuantizationError(f"FakeQuantize {name!r}: needs 5 inputs (X, input_low, "
                                    f"input_high, output_low, output_high), got {len(inputs)}")
        levels = attr.get("levels")
        vals = [const_value(i) for i in inputs[1:]]
        check_ranges(name, *vals, levels)
        check_finite_constant(inputs[0], name, "FakeQuantize")
        args = [inputs[0]]
        for expr, v in zip(inputs[1:], vals):
            if v is not None and v.dtype != np.float32:
                expr = relax.const(v.astype(np.float32))
            elif v is None and str(expr.ty.dtype) != "float32":
                expr = relax.op.astype(expr, "float32")
            args.append(expr)
        return ops.fake_quantize(*args, levels=int(levels))
