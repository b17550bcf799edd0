"""What qcompile knows about ONNX op semantics that quantization needs (a registry, no policy).

Which ops are quantized, and on which inputs, is the *target's* decision (`targets/_rules/*.toml`,
read by `rules.py`). This module only answers questions about what an op *is*:

* `LINEAR_OPS`: ops with a weight whose output channels are quantized per channel — where the
  weight's output-channel axis is, where the op's output channel axis is, and where its bias
  lives (for bias correction);
* `nonnegative_output(...)`: does the op always produce values >= 0 (ReLU-like), so that its
  consumer's activation quantizer can be unsigned (u8, range [0, max]);
* `PRESERVES_SIGN`: ops whose output is non-negative when their data inputs are (max-pool,
  reshape, concat, average pooling, ...), so non-negativity is seen through them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from onnx import NodeProto, helper


def attr(node: NodeProto, name: str, default=None):
    """An attribute's value (ints, floats, strings, lists) or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclasses.dataclass(frozen=True)
class LinearOp:
    """A weighted op. Axes may be negative (counted from the end)."""
    weight_input: int
    weight_channel_axis: Callable[[NodeProto, int], int]   # (node, weight rank) -> axis
    output_channel_axis: Callable[[NodeProto, int], int]   # (node, output rank) -> axis
    bias_input: int | None                                 # own bias input, or None (MatMul)


def _gemm_weight_axis(node: NodeProto, rank: int) -> int:
    return 0 if attr(node, "transB", 0) else 1


LINEAR_OPS: dict[str, LinearOp] = {
    "Conv": LinearOp(1, lambda n, r: 0, lambda n, r: 1, 2),
    "ConvTranspose": LinearOp(1, lambda n, r: 1, lambda n, r: 1, 2),
    "Gemm": LinearOp(1, _gemm_weight_axis, lambda n, r: 1, 2),
    "MatMul": LinearOp(1, lambda n, r: r - 1, lambda n, r: r - 1, None),
}

# Ops the low-precision passes run on integers in their input's precision (no quantizer of
# their own; low-precision step 2, docs/low-precision.md). Reported as "precision-preserving", not as fp32 compute.
PRECISION_PRESERVING = {"Relu", "Clip", "MaxPool", "GlobalMaxPool", "Reshape", "Flatten",
                        "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split", "Pad",
                        "DepthToSpace", "SpaceToDepth"}

# Ops whose output is >= 0 whatever their input (Clip only when its lower bound is >= 0).
_ALWAYS_NONNEGATIVE = {"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp", "Softplus",
                       "Sqrt", "ReduceL2", "ReduceSumSquare"}

# Ops whose output is >= 0 when all their data inputs are.
PRESERVES_SIGN = {"MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Reshape",
                  "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice",
                  "Split", "Resize", "Upsample", "SpaceToDepth", "DepthToSpace", "Tile",
                  "Expand", "ReduceMean", "ReduceMax", "ReduceMin", "Gather", "Pad", "Relu",
                  "Mul", "Add", "Max", "Min"}

# The data inputs of shape-manipulating ops (the others are shapes, indices, pads).
DATA_INPUTS = {"Reshape": (0,), "Slice": (0,), "Split": (0,), "Resize": (0,), "Upsample": (0,),
               "Tile": (0,), "Expand": (0,), "Gather": (0,), "Pad": (0,), "Squeeze": (0,),
               "Unsqueeze": (0,), "ReduceMean": (0,), "ReduceMax": (0,), "ReduceMin": (0,)}


def nonnegative_output(node: NodeProto, const_value: Callable[[str], np.ndarray | None]) -> bool:
    """True when the op's output is >= 0 for any input (ReLU-like)."""
    if node.op_type in _ALWAYS_NONNEGATIVE:
        return True
    if node.op_type == "Clip":
        low = attr(node, "min")
        if low is None and len(node.input) > 1 and node.input[1]:
            v = const_value(node.input[1])
            low = None if v is None else float(np.asarray(v).reshape(-1)[0])
        return low is not None and low >= 0
    if node.op_type == "LeakyRelu":
        return False
    return False
