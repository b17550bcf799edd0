"""Whole int8 ResNet-50 and MobileNetV2 through the OpenCL runner (PoCL in CI).

Each model (built here with onnx.helper and seeded weights, as ../shared/bench/make_models.py
describes them, without its Softmax so the output is the dequantized logits) is quantized
with qcompile's PTQ, built for the x86 host and for `intel-gpu`, and run on the same inputs:
the OpenCL artifact's output must equal the x86 int8 build's bit for bit, and both must be
as close to fp32 (ONNX Runtime) as each other. Slow: ~1.5 min (MobileNetV2) and ~2 min
(ResNet-50) on 2 cores, most of it PoCL compiling the kernels on the first run.
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import (assert_opencl_int8_kernels_complete, ort_run,
                      require_opencl)

pytestmark = pytest.mark.slow


class _Net:
    """A tiny ONNX graph builder (Conv with folded-BN bias, ReLU / ReLU6, Add, pools, Gemm)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def _name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p):
        name = self._name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def op(self, op_type, inputs, p, **attrs):
        out = self._name(p)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, group=1, gain=1.0):
        fan = cin // group * k * k
        w = gain * self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan)
        b = self.rng.standard_normal(cout) * 0.01
        return self.op("Conv", [x, self.const(w, "w"), self.const(b, "b")], "conv",
                       kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                       group=group)

    def relu(self, x):
        return self.op("Relu", [x], "relu")

    def relu6(self, x):
        return self.op("Clip", [x, self.const(0.0, "lo"), self.const(6.0, "hi")], "relu6")

    def head(self, x, cin):
        x = self.op("GlobalAveragePool", [x], "gap")
        x = self.op("Flatten", [x], "flatten", axis=1)
        w = self.rng.standard_normal((1000, cin)) * np.sqrt(2.0 / cin)
        return self.op("Gemm", [x, self.const(w, "fc_w"),
                                self.const(self.rng.standard_normal(1000) * 0.01, "fc_b")],
                       "fc", transB=1)

    def model(self, out):
        g = helper.make_graph(
            self.nodes, "net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 1000])],
            initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def resnet50(seed=0):
    """ResNet-50 v1.5 (3-4-6-3 bottlenecks, stride on the 3x3)."""
    b = _Net(seed)
    x = b.relu(b.conv("input", 3, 64, 7, 2))
    x = b.op("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.relu(b.conv(x, cin, width, 1))
            y = b.relu(b.conv(y, width, width, 3, s))
            y = b.conv(y, width, width * 4, 1, gain=0.2)
            short = b.conv(x, cin, width * 4, 1, s) if (s != 1 or cin != width * 4) else x
            x = b.relu(b.op("Add", [y, short], "add"))
            cin = width * 4
    return b.model(b.head(x, cin))


def mobilenetv2(seed=0):
    """MobileNetV2 1.0 (inverted residuals, ReLU6)."""
    b = _Net(seed)
    x = b.relu6(b.conv("input", 3, 32, 3, 2))
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            y = b.relu6(b.conv(x, cin, hid, 1)) if t != 1 else x
            y = b.relu6(b.conv(y, hid, hid, 3, stride, group=hid))
            y = b.conv(y, hid, c, 1, gain=0.5)
            x = b.op("Add", [y, x], "add") if (stride == 1 and cin == c) else y
            cin = c
    x = b.relu6(b.conv(x, cin, 1280, 1))
    return b.model(b.head(x, 1280))


def sqnr(ref, x):
    err = ref.astype(np.float64) - x
    return 10 * np.log10((ref.astype(np.float64) ** 2).sum() / max((err ** 2).sum(), 1e-30))


@pytest.mark.parametrize("make", [mobilenetv2, resnet50], ids=["mobilenetv2", "resnet50"])
def test_whole_int8_model_on_opencl_equals_x86(make, tmp_path):
    require_opencl()
    from qcompile.build import BuildConfig, build
    from qcompile.quantization.api import quantize
    from qcompile.runtime import load

    fp32 = tmp_path / "fp32.onnx"
    onnx.save(make(), fp32)
    calib = np.random.default_rng(123).standard_normal((3, 1, 3, 224, 224)).astype(np.float32)
    onnx.save(quantize(str(fp32), calib), tmp_path / "int8.onnx")
    gpu = build(str(tmp_path / "int8.onnx"), BuildConfig(target="intel-gpu"),
                tmp_path / "gpu", quiet=True)
    build(str(tmp_path / "int8.onnx"), BuildConfig(target="host"), tmp_path / "cpu",
          quiet=True)
    info = gpu.meta["opencl"]
    # every kernel holding an int8 conv / dense runs its template or is a model.json
    # fallback with its reason (the rest: pools, the input quantize, the global-average
    # sum, the head's requantize go to dlight); in these models none falls back
    assert_opencl_int8_kernels_complete(gpu.meta)
    assert gpu.meta["fallbacks"] == [], gpu.meta["fallbacks"]
    assert info["int8_dot_product_calls"] > 0, info
    mg, mc = load(tmp_path / "gpu"), load(tmp_path / "cpu")
    name = mg.outputs[0].name
    for seed in (1000, 1001):
        x = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        a, c = mg({"input": x})[name], mc({"input": x})[name]
        np.testing.assert_array_equal(a, c)          # the OpenCL int8 build == the x86 one
        ref = ort_run(fp32, {"input": x})[0]
        assert sqnr(ref, a) == sqnr(ref, c) and sqnr(ref, a) > 15.0
