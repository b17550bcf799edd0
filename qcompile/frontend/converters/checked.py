"""Ops whose TVM converter ignores an attribute or input and so computed a different result
without a word (found by ONNX's node tests, scripts/onnx_node_tests.py). Each is either
implemented here or refused with a ModelError naming the node:

* `IsInf` detect_negative / detect_positive (TVM: always both signs);
* `SpaceToDepth` mode="CRD" (opset 25+; TVM: always DCR);
* `Expand` whose shape is computed at run time (TVM kept the input's dims): refused, the
  shape must be a constant (it is once the frontend folds Shape chains);
* `Dropout` with training_mode true and `BatchNormalization` training_mode=1 (TVM: the
  inference form): refused, qcompile compiles inference graphs.
"""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..registry import override_converter
from ._util import attr_str, const_value, node_name


@override_converter("IsInf")
def is_inf(bb, inputs, attr, opset, tvm):
    from tvm import relax

    neg, pos = int(attr.get("detect_negative", 1)), int(attr.get("detect_positive", 1))
    if neg and pos:
        return None
    x = inputs[0]
    inf = relax.op.isinf(x)
    if not (neg or pos):
        return relax.op.logical_and(inf, relax.op.not_equal(x, x))   # all false
    zero = relax.const(np.zeros((), str(x.ty.dtype)))
    side = relax.op.greater(x, zero) if pos else relax.op.less(x, zero)
    return relax.op.logical_and(inf, side)


@override_converter("SpaceToDepth")
def space_to_depth(bb, inputs, attr, opset, tvm):
    from tvm import relax

    if attr_str(attr.get("mode", "DCR")) != "CRD":
        return None
    bs = int(attr["blocksize"])
    b, c, h, w = (int(d) for d in inputs[0].ty.shape)
    x = relax.op.reshape(inputs[0], (b, c, h // bs, bs, w // bs, bs))
    x = relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4])
    return relax.op.reshape(x, (b, c * bs * bs, h // bs, w // bs))


@override_converter("Expand")
def expand(bb, inputs, attr, opset, tvm):
    from tvm import relax

    if not isinstance(inputs[1], relax.ShapeExpr) and const_value(inputs[1]) is None:
        raise ModelError(
            f"Expand {node_name(attr)!r}: its shape is computed at run time; qcompile needs it "
            "constant (fix the input shapes with --input-shape so the Shape ops before it "
            "fold, or make the shape an initializer)")
    return None


@override_converter("Dropout")
def dropout(bb, inputs, attr, opset, tvm):
    if len(inputs) > 2 and inputs[2] is not None:
        t = const_value(inputs[2])
        if t is None or bool(np.asarray(t).reshape(-1)[0]):
            raise ModelError(f"Dropout {node_name(attr)!r}: training_mode is "
                             f"{'not a constant' if t is None else 'true'}; qcompile compiles "
                             "inference graphs (export the model in eval mode)")
    return None


@override_converter("BatchNormalization")
def batch_normalization(bb, inputs, attr, opset, tvm):
    if int(attr.get("training_mode", 0)):
        raise ModelError(f"BatchNormalization {node_name(attr)!r}: training_mode=1; qcompile "
                         "compiles inference graphs (export in eval mode)")
    return None
