"""Small models for the tuning tests (tests/test_tuning_*.py, tests/test_rpc*.py)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_int8_cnn(seed: int = 0, channels: int = 16, size: int = 14) -> onnx.ModelProto:
    """A QDQ (QuantizeLinear/DequantizeLinear) conv net: two 3x3 convs with int8 per-channel
    weights and uint8 activations, ReLU, and a residual-free head. The low-precision passes
    turn it into u8 x s8 -> s32 convolutions plus requantize."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def qdq_act(x, name, scale, zp=0):
        s = const(name + "_s", np.array(scale, np.float32))
        z = const(name + "_z", np.array(zp, np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [name + "_q"], name=name + "_q"))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", s, z], [name + "_dq"],
                                      name=name + "_dq"))
        return name + "_dq"

    def conv(x, cin, cout, name):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))
        ws = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        wq = np.clip(np.round(w / ws[:, None, None, None]), -127, 127).astype(np.int8)
        wq_n = const(name + "_wq", wq)
        ws_n = const(name + "_ws", ws)
        wz_n = const(name + "_wz", np.zeros(cout, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [wq_n, ws_n, wz_n], [name + "_w"],
                                      name=name + "_wdq", axis=0))
        b = const(name + "_b", (rng.standard_normal(cout) * 0.01).astype(np.float32))
        nodes.append(helper.make_node("Conv", [x, name + "_w", b], [name], name=name,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        return name

    x = qdq_act("input", "in", 0.03, 128)
    y = conv(x, 3, channels, "conv1")
    nodes.append(helper.make_node("Relu", [y], ["relu1"], name="relu1"))
    y = qdq_act("relu1", "a1", 0.02)
    y = conv(y, channels, channels, "conv2")
    nodes.append(helper.make_node("Relu", [y], ["relu2"], name="relu2"))
    y = qdq_act("relu2", "a2", 0.02)
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["out"], name="gap"))
    graph = helper.make_graph(
        nodes, "int8_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, channels, 1, 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
