"""One model at every ONNX opset from 11 to 21, each written the way that opset spells it
(Clip bounds as inputs, Split sizes as attribute then input, ReduceMean axes as attribute then
input, Resize with roi/scales): the fp32 build agrees with ONNX Runtime, and `qcompile
quantize` + the int8 build run its conv in int8 and stay close to fp32."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run

OPSETS = list(range(11, 22))


def _model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(opset)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out] if isinstance(out, str) else out,
                                      name=out if isinstance(out, str) else out[0], **attrs))
        return out

    w = const("w", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32))
    b = const("b", (rng.standard_normal(8) * 0.1).astype(np.float32))
    y = node("Conv", ["input", w, b], "conv", pads=[1, 1, 1, 1])
    y = node("Clip", [y, const("lo", np.float32(0)), const("hi", np.float32(6))], "relu6")
    if opset < 13:
        a, c = node("Split", [y], ["half_a", "half_b"], axis=1, split=[4, 4])
    else:
        a, c = node("Split", [y, const("sizes", np.array([4, 4], np.int64))],
                    ["half_a", "half_b"], axis=1)
    y = node("Add", [a, c], "add")
    y = node("Resize", [y, const("roi", np.zeros(0, np.float32)),
                        const("scales", np.array([1, 1, 2, 2], np.float32))], "up",
             mode="nearest")
    y = node("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    if opset < 18:
        y = node("ReduceMean", [y], "gap", axes=[2, 3], keepdims=0)
    else:
        y = node("ReduceMean", [y, const("axes", np.array([2, 3], np.int64))], "gap",
                 keepdims=0)
    fc = const("fc_w", (rng.standard_normal((5, 4)) * 0.5).astype(np.float32))
    y = node("Gemm", [y, fc, const("fc_b", np.zeros(5, np.float32))], "fc", transB=1)
    node("Softmax", [y], "prob", axis=1)
    g = helper.make_graph(nodes, f"opset{opset}",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(helper.find_min_ir_version_for(m.opset_import), 10)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("opset", OPSETS)
def test_model_at_every_opset(opset, tmp_path):
    from qcompile.build import BuildConfig, build
    from qcompile.quantization import quantize

    m = _model(opset)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = ort_run(m, {"input": x})[0]

    fp32 = build(str(path), BuildConfig(pretuned=False), tmp_path / "f", quiet=True)
    import qcompile

    got = qcompile.load(fp32.out_dir)({"input": x})["prob"]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), opset

    calib = rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    q = tmp_path / "q.onnx"
    onnx.save(quantize(str(path), calib), q)
    int8 = build(str(q), BuildConfig(pretuned=False), tmp_path / "i", quiet=True)
    conv = next(o for o in int8.meta["ops"] if o["node"] == "conv")
    assert conv["precision"] == "int8", conv
    assert not int8.meta["fallbacks"], int8.meta["fallbacks"]
    got8 = qcompile.load(int8.out_dir)({"input": x})["prob"]
    assert np.abs(got8 - ref).max() < 0.05, (opset, got8, ref)
