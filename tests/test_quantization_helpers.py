"""Small ONNX models and data shared by the tests/test_quantization_*.py files (no tests here).

Models are built with onnx.helper (IR 8, opset 17) and seeded weights; every one runs in ONNX
Runtime in milliseconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_model(nodes, inputs, outputs, inits, opset=17, extra_opsets=()):
    g = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _t(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv_net(seed: int = 0, channels: int = 8, with_concat: bool = True, opset: int = 17
             ) -> onnx.ModelProto:
    """input[1,3,16,16] -> conv1 -> relu1 -> conv2 (no bias) -> add(conv2, conv_sc) -> relu2
    -> [concat(relu2, conv3)] -> gap -> flatten -> fc (Gemm, transB) -> logits [1,10]."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        numpy_helper.from_array(_t(rng, (c, 3, 3, 3), 0.3), "w1"),
        numpy_helper.from_array(_t(rng, (c,), 0.1), "b1"),
        numpy_helper.from_array(_t(rng, (c, c, 3, 3), 0.15), "w2"),
        numpy_helper.from_array(_t(rng, (c, 3, 1, 1), 0.5), "wsc"),
        numpy_helper.from_array(_t(rng, (c,), 0.1), "bsc"),
        numpy_helper.from_array(_t(rng, (c, c, 1, 1), 0.3), "w3"),
        numpy_helper.from_array(_t(rng, (c,), 0.1), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["input", "wsc", "bsc"], ["sc"], name="conv_sc"),
        helper.make_node("Add", ["c2", "sc"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
    ]
    feat, fc_in = "r2", c
    if with_concat:
        nodes += [helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
                  helper.make_node("Concat", ["r2", "c3"], ["cat"], name="concat", axis=1)]
        feat, fc_in = "cat", 2 * c
    inits += [numpy_helper.from_array(_t(rng, (10, fc_in), 0.3), "wfc"),
              numpy_helper.from_array(_t(rng, (10,), 0.1), "bfc")]
    nodes += [helper.make_node("GlobalAveragePool", [feat], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                            [1, 3, 16, 16])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits,
                      opset=opset)


def mlp(seed: int = 0, d: int = 16, hidden: int = 32, batch=None) -> onnx.ModelProto:
    """x[B,d] -> MatMul+Add(bias) -> Relu -> MatMul (no bias) -> Add(bias) -> y[B,4];
    B dynamic when batch is None."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_t(rng, (d, hidden), 0.4), "w1"),
             numpy_helper.from_array(_t(rng, (hidden,), 0.2), "b1"),
             numpy_helper.from_array(_t(rng, (hidden, 4), 0.3), "w2"),
             numpy_helper.from_array(_t(rng, (4,), 0.2), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="fc2_bias")]
    b = batch if batch is not None else "B"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, d])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 4])], inits)


def conv_data(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def ort_session(model: onnx.ModelProto, optimize: bool = False):
    """`feed -> outputs` over one ONNX Runtime session (optimize=False: no fusions, so QDQ is
    emulated in fp32 instead of run by int8 kernels)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else
                                   ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda feed: s.run(None, feed)


def run_ort(model: onnx.ModelProto, feed: dict, optimize: bool = False) -> list[np.ndarray]:
    return ort_session(model, optimize)(feed)


def openvino_session(model: onnx.ModelProto, emulate: bool = True):
    """`feed -> outputs` in OpenVINO CPU; emulate=True turns its low-precision transformations
    off, so FakeQuantize is executed as defined (fp32) instead of by int8 kernels."""
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    if emulate:
        cfg["LP_TRANSFORMS_MODE"] = False
    cm = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", cfg)

    def run(feed):
        res = cm(feed)
        return [np.asarray(res[o]) for o in cm.outputs]
    return run


def run_openvino(model: onnx.ModelProto, feed: dict, emulate: bool = True) -> list[np.ndarray]:
    return openvino_session(model, emulate)(feed)


def sqnr(ref, test) -> float:
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - test) ** 2), 1e-30)))


def fq_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """FakeQuantize nodes by the tensor they quantize."""
    return {n.input[0]: n for n in model.graph.node if n.op_type == "FakeQuantize"}


def init_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)
