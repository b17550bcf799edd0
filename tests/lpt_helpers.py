"""Builders shared by the low-precision tests: Relax IR snippets (BlockBuilder, for the
Before/Expected pass tests — TVMScript cannot parse qcompile's custom ops) and small quantized
ONNX models (FakeQuantize, QDQ via onnxruntime.quantization, QOperator)."""
from __future__ import annotations

import contextlib

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from qcompile.relay_passes.pipeline import LowPrecisionContext

OV = "org.openvinotoolkit"


# ------------------------------------------------------------------------------ Relax IR
class IR:
    """`with IR({"x": ((1, 4, 8, 8), "float32")}) as ir: ...; ir.out(v)` -> `ir.mod`."""

    def __init__(self, params: dict):
        self.bb = relax.BlockBuilder()
        self.params = [relax.Var(n, relax.TensorType(s, d)) for n, (s, d) in params.items()]
        self.mod = None

    def __enter__(self):
        self._f = self.bb.function("main", self.params)
        self._f.__enter__()
        self._d = self.bb.dataflow()
        self._d.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        return False

    @property
    def p(self):
        return self.params

    def emit(self, expr, name=None):
        return self.bb.emit(expr, name_hint=name) if name else self.bb.emit(expr)

    def out(self, v):
        o = self.bb.emit_output(v)
        self._d.__exit__(None, None, None)
        self.bb.emit_func_output(o)
        self._f.__exit__(None, None, None)
        self.mod = self.bb.get()
        return self.mod


def c(arr, dtype=None):
    return relax.const(np.asarray(arr, dtype) if dtype else np.asarray(arr))


def q(x, s, z, dtype="uint8", axis=1):
    return relax.op.quantize(x, c(s, "float32"), c(z, dtype), axis=axis, out_dtype=dtype)


def dq(x, s, z, dtype="uint8", axis=1):
    return relax.op.dequantize(x, c(s, "float32"), c(z, dtype), axis=axis, out_dtype="float32")


def ctx(strict=False) -> LowPrecisionContext:
    from qcompile.targets import all_targets

    return LowPrecisionContext(spec=all_targets()["avx2"], strict=strict)


def names(mod) -> list[str]:
    return [b.var.name for blk in mod["main"].body.blocks for b in blk.bindings]


def ops_of(mod) -> list[str]:
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                out.append(v.op.name)
    return out


# ------------------------------------------------------------------------------ compile
def compile_run(mod, inputs, target="avx2"):
    """Build `mod` as `qcompile build` does after the low-precision passes (the target's
    kernel dispatch when there is one, fusion, default schedules) and run it on `inputs`."""
    from qcompile import codegen
    from qcompile.build import _dispatch_kernels
    from qcompile.targets import all_targets

    spec = all_targets()[target]
    tgt = spec.tvm_target(2)
    mod, default_schedule = _dispatch_kernels(mod, spec)
    ex = codegen.compile_fused(codegen.fuse(mod, tgt), tgt, default_schedule=default_schedule)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])
    if isinstance(out, tvm.runtime.Tensor):
        return out.numpy()
    return [o.numpy() for o in out]


# ------------------------------------------------------------------------------ ONNX
class OnnxBuilder:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, arr, p="c"):
        self.n += 1
        name = f"{p}_{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, inputs, name=None, domain="", **attrs):
        self.n += 1
        name = name or f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, domain=domain,
                                           **attrs))
        return name

    def fq(self, x, lo, hi, levels=256, name=None, out=None, domain=OV):
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        l_, h_ = self.const(lo, "lo"), self.const(hi, "hi")
        ol, oh = (l_, h_) if out is None else (self.const(np.asarray(out[0], np.float32), "ol"),
                                                self.const(np.asarray(out[1], np.float32), "oh"))
        return self.op("FakeQuantize", [x, l_, h_, ol, oh], name=name, domain=domain,
                       levels=levels)

    def weight_fq(self, w, axis=0, name=None):
        m = np.abs(w).reshape(w.shape[axis], -1).max(axis=1) if axis == 0 else \
            np.abs(w).max(axis=0)
        m = np.maximum(m, 1e-6).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        return self.fq(self.const(w, "w"), -m.reshape(shape), m.reshape(shape), 255, name=name)

    def model(self, inputs, outputs, opset=17):
        g = helper.make_graph(self.nodes, "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                               for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                               for n, s in outputs], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                                helper.make_opsetid(OV, 1)])
        m.ir_version = 8
        return m


def fq_cnn(seed=0):
    """A small CNN quantized with FakeQuantize as NNCF writes it: every conv, the residual add,
    max/avg/global pools, concat and the Gemm have quantized inputs; Softmax does not.
    Covers asymmetric u8 input, signed symmetric activations (256 levels), per-channel 255
    level weights, strided / dilated / depthwise / grouped convs, ReLU and ReLU6 (Clip)."""
    b = OnnxBuilder(seed)
    r = b.rng

    def w(shape, gain=1.0):
        fan = int(np.prod(shape[1:]))
        return (r.standard_normal(shape) * gain * np.sqrt(2.0 / fan)).astype(np.float32)

    def conv(x, wt, name, **kw):
        bias = b.const((r.standard_normal(wt.shape[0]) * 0.05).astype(np.float32), "b")
        k = wt.shape[2]
        kw.setdefault("pads", [k // 2] * 4)
        return b.op("Conv", [x, b.weight_fq(wt), bias], name=name, kernel_shape=[k, k], **kw)

    x = b.fq("input", -124 * 0.02, 131 * 0.02, 256, name="fq_input")  # asymmetric u8, zp 124
    y = conv(x, w((8, 3, 3, 3)), "conv1", strides=[2, 2])
    y = b.op("Relu", [y], name="relu1")
    y = b.fq(y, 0.0, 4.0, 256, name="fq_relu1")
    y = b.op("MaxPool", [y], name="pool1", kernel_shape=[3, 3], strides=[1, 1],
             pads=[1, 1, 1, 1])
    d = conv(y, w((8, 1, 3, 3)), "dwconv", group=8, dilations=[2, 2], pads=[2, 2, 2, 2])
    d = b.op("Clip", [d, b.const(np.float32(0), "z"), b.const(np.float32(6), "six")],
             name="relu6")
    d = b.fq(d, 0.0, 6.0, 256, name="fq_relu6")
    g = conv(d, w((8, 2, 3, 3)), "gconv", group=4)
    g = b.fq(g, -3.0 * 128 / 127, 3.0, 256, name="fq_gconv")          # signed symmetric
    s = b.fq(y, -32 * 0.018, 223 * 0.018, 256, name="fq_skip")     # asymmetric, zp 32
    a = b.op("Add", [g, s], name="add")
    a = b.op("Relu", [a], name="relu2")
    a = b.fq(a, 0.0, 5.0, 256, name="fq_add")
    p = b.op("AveragePool", [a], name="avgpool", kernel_shape=[2, 2], strides=[2, 2])
    p = b.fq(p, 0.0, 5.0, 256, name="fq_avg")
    p2 = b.op("MaxPool", [a], name="maxpool2", kernel_shape=[2, 2], strides=[2, 2])
    cat = b.op("Concat", [p, p2], name="concat", axis=1)
    gap = b.op("GlobalAveragePool", [cat], name="gap")
    gap = b.fq(gap, 0.0, 3.0, 256, name="fq_gap")
    f = b.op("Flatten", [gap], name="flatten", axis=1)
    fw = w((10, 16))
    fc = b.op("Gemm", [f, b.weight_fq(fw), b.const(np.zeros(10, np.float32), "fb")], name="fc",
              transB=1)
    b.op("Softmax", [fc], name="prob", axis=-1)
    return b.model([("input", [1, 3, 16, 16])], [("prob", [1, 10])])


def fp32_cnn(seed=0):
    """The float version of a small CNN, for onnxruntime.quantization (QDQ / QOperator)."""
    b = OnnxBuilder(seed)
    r = b.rng

    def conv(x, cin, cout, k, name, **kw):
        wt = (r.standard_normal((cout, cin // kw.get("group", 1), k, k))
              * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        bias = (r.standard_normal(cout) * 0.05).astype(np.float32)
        return b.op("Conv", [x, b.const(wt, "w"), b.const(bias, "b")], name=name,
                    kernel_shape=[k, k], pads=[k // 2] * 4, **kw)

    y = b.op("Relu", [conv("input", 3, 8, 3, "conv1", strides=[2, 2])], name="relu1")
    y = b.op("MaxPool", [y], name="pool1", kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("Relu", [conv(y, 8, 8, 3, "conv2")], name="relu2")
    z = conv(z, 8, 8, 1, "conv3")
    a = b.op("Relu", [b.op("Add", [z, y], name="add")], name="relu3")
    gap = b.op("GlobalAveragePool", [a], name="gap")
    f = b.op("Flatten", [gap], name="flatten", axis=1)
    fw = (r.standard_normal((8, 10)) * 0.3).astype(np.float32)
    fc = b.op("MatMul", [f, b.const(fw, "fw")], name="fc")
    b.op("Softmax", [fc], name="prob", axis=-1)
    return b.model([("input", [1, 3, 32, 32])], [("prob", [1, 10])])


def ort_quantize(model: onnx.ModelProto, fmt: str = "qdq", n: int = 4, seed: int = 1,
                 per_channel: bool = True, act: str = "int8") -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_static on `model` (random calibration data)."""
    import os
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: rng.standard_normal(shape).astype(np.float32)}
                            for _ in range(n)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            quantize_static(src, dst, Reader(),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else
                            QuantFormat.QOperator, per_channel=per_channel,
                            activation_type=QuantType.QInt8 if act == "int8" else
                            QuantType.QUInt8, weight_type=QuantType.QInt8)
        q = onnx.load(dst)
    q.ir_version = min(q.ir_version, 9)
    return q


def fq_model_levels16():
    """A conv whose input FakeQuantize has 16 levels (no 8-bit realization)."""
    b = OnnxBuilder(0)
    w = (b.rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    x = b.fq("input", 0.0, 1.5, 16, name="fq16")
    b.op("Conv", [x, b.weight_fq(w)], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model([("input", [1, 3, 8, 8])], [("conv", [1, 4, 8, 8])])
