"""Import of quantized ONNX: FakeQuantize, QuantizeLinear/DequantizeLinear, QOperator ops,
ConvInteger/MatMulInteger, and the provenance of what TVM's converters bind themselves."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from lpt_helpers import OV, OnnxBuilder, compile_run, fp32_cnn, ops_of, ort_quantize
from qcompile.errors import QuantizationError
from qcompile.frontend import import_onnx


def _fq_model(lo, hi, levels=256, domain=OV):
    b = OnnxBuilder()
    b.fq("x", lo, hi, levels, name="my_fq", domain=domain)
    return b.model([("x", [1, 4])], [("my_fq", [1, 4])])


def _bindings(mod):
    return {b.var.name: b.value for blk in mod["main"].body.blocks for b in blk.bindings}


@pytest.mark.parametrize("domain", [OV, ""])
def test_fake_quantize_imports_in_both_domains(domain):
    im = import_onnx(_fq_model(-1.0, 1.0, domain=domain))
    v = _bindings(im.mod)["my_fq"]
    assert v.op.name == "qcompile.fake_quantize" and int(v.attrs["levels"]) == 256


@pytest.mark.parametrize("lo, hi, levels, match", [
    (0.5, 0.5, 256, r"FakeQuantize 'my_fq': input_low == input_high"),
    (np.array([0.0, 1.0], np.float32), np.array([1.0, 1.0], np.float32), 256,
     r"'my_fq': input_low == input_high .* at 1 of 2"),
    (np.nan, 1.0, 256, r"FakeQuantize 'my_fq': input_low contains NaN"),
    (-1.0, np.inf, 256, r"FakeQuantize 'my_fq': input_high is infinite"),
    (-1.0, 1.0, 1, r"'my_fq': attribute 'levels' must be in 2..65536 \(got 1\)"),
    (-1.0, 1.0, 65537, r"'my_fq': attribute 'levels' must be in 2..65536 \(got 65537\)"),
])
def test_invalid_fake_quantize_ranges_name_the_node(lo, hi, levels, match):
    b = OnnxBuilder()
    b.fq("x", lo, hi, levels, name="my_fq")
    m = b.model([("x", [1, 2])], [("my_fq", [1, 2])])
    with pytest.raises(QuantizationError, match=match):
        import_onnx(m)


def test_qdq_per_axis_with_negative_axis_and_missing_zero_point():
    w = np.arange(12, dtype=np.int8).reshape(3, 4)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="dq_w", axis=-1),
             helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs"], ["xd"], name="dq_x"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([0.1, 0.2, 0.3, 0.4], np.float32), "ws"),
             numpy_helper.from_array(np.array([0.05], np.float32), "xs")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    v = _bindings(import_onnx(m).mod)
    assert int(v["dq_w"].attrs.axis) == 1
    assert v["q_x"].args[1].ty.ndim == 0 and str(v["q_x"].attrs.out_dtype) == "uint8"


def test_clip_and_layer_norm_are_bound_under_their_node_names():
    b = OnnxBuilder()
    y = b.op("Clip", ["x", b.const(np.float32(0)), b.const(np.float32(6))], name="relu6")
    b.op("LayerNormalization", [y, b.const(np.ones(4, np.float32)),
                                b.const(np.zeros(4, np.float32))], name="ln", axis=-1)
    v = _bindings(import_onnx(b.model([("x", [2, 4])], [("ln", [2, 4])])).mod)
    assert v["relu6"].op.name == "relax.clip"
    assert v["ln"].op.name == "relax.nn.layer_norm"


def test_qoperator_model_becomes_qdq_form():
    qm = ort_quantize(fp32_cnn(), fmt="qoperator")
    kinds = {n.op_type for n in qm.graph.node}
    assert {"QLinearConv", "QLinearMatMul"} <= kinds, kinds
    im = import_onnx(qm)
    conv_nodes = [n.name for n in qm.graph.node if n.op_type == "QLinearConv"]
    v = _bindings(im.mod)
    assert all(n in v or n.replace("/", "_") in v for n in conv_nodes)
    assert "relax.quantize" in ops_of(im.mod) and "relax.dequantize" in ops_of(im.mod)


def _integer_model(op, x_dtype, x_zp, w, w_zp):
    tx = TensorProto.UINT8 if x_dtype == "uint8" else TensorProto.INT8
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.asarray(w_zp), "wz"),
             numpy_helper.from_array(np.asarray(x_zp, x_dtype), "xz")]
    if op == "ConvInteger":
        node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="ci",
                                pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        xs, ys = [1, 3, 5, 5], [1, w.shape[0], 5, 5]
    else:
        node = helper.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"], name="ci")
        xs, ys = [2, 3, w.shape[0]], [2, 3, w.shape[1]]
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", tx, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, ys)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, xs


@pytest.mark.parametrize("op, x_dtype, x_zp, w_dtype, w_zp, fast", [
    ("ConvInteger", "uint8", 255, "int8", 0, True),
    ("ConvInteger", "int8", -128, "uint8", 128, True),
    ("MatMulInteger", "uint8", 7, "int8", 0, True),
    ("MatMulInteger", "int8", 3, "uint8", 3, False),      # w - 3 does not fit int8
])
def test_conv_integer_and_matmul_integer_are_exact(op, x_dtype, x_zp, w_dtype, w_zp, fast):
    rng = np.random.default_rng(0)
    info = np.iinfo(w_dtype)
    shape = (4, 3, 3, 3) if op == "ConvInteger" else (5, 4)
    w = rng.integers(info.min, info.max + 1, shape).astype(w_dtype)
    w.reshape(-1)[0] = info.min
    m, xs = _integer_model(op, x_dtype, x_zp, w, np.asarray(w_zp, w_dtype))
    im = import_onnx(m)
    core = [o for o in ops_of(im.mod) if o in ("relax.nn.conv2d", "relax.matmul")][0]
    call = [b.value for blk in im.mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and b.value.op.name == core][0]
    dtypes = [str(a.ty.dtype) for a in call.args]
    assert (dtypes == ["uint8", "int8"]) == fast, dtypes
    xi = np.iinfo(x_dtype)
    x = rng.integers(xi.min, xi.max + 1, xs).astype(x_dtype)
    x.reshape(-1)[:3] = xi.max
    got = compile_run(im.mod, [x])
    from onnx.reference import ReferenceEvaluator

    # ONNX's reference implementation, not onnxruntime: on this AVX2 machine ORT's u8 x s8
    # MatMulInteger saturates s16 pair sums (255 x -128), and its int8-input ConvInteger pads
    # with 0 instead of the zero point
    np.testing.assert_array_equal(got, ReferenceEvaluator(m).run(None, {"x": x})[0])
