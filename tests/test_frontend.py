"""ONNX import: shapes, constant folding, provenance and every import error path."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_mlp
from qcompile.errors import InputError, ModelError, UnsupportedOpsError
from qcompile.frontend import import_onnx, prepare


def test_import_names_bindings_after_onnx_nodes(mlp_path):
    im = import_onnx(mlp_path)
    assert [t.name for t in im.inputs] == ["x"]
    assert im.inputs[0].shape == (2, 16) and im.inputs[0].dtype == "float32"
    assert im.outputs[0].name == "y" and im.outputs[0].shape == (2, 8)
    names = {b.var.name for blk in im.mod["main"].body.blocks for b in blk.bindings}
    assert {"fc1", "fc1_bias", "relu", "fc2"} <= names


def test_dynamic_input_needs_shape(tmp_path):
    p = tmp_path / "dyn.onnx"
    onnx.save(make_mlp(batch="dynamic"), p)
    with pytest.raises(InputError, match=r"--input-shape x=batch,16"):
        import_onnx(p)
    im = import_onnx(p, {"x": (3, 16)})
    assert im.inputs[0].shape == (3, 16) and im.outputs[0].shape == (3, 8)


def test_every_symbolic_dim_is_named_in_one_error(tmp_path):
    """Two inputs with symbolic dims: one error names both inputs, every symbol and the
    flags to pass; giving one of the two still names the other."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["y"], name="add")], "g",
                          [vi("ids", TensorProto.FLOAT, ["batch", "seq"]),
                           vi("mask", TensorProto.FLOAT, ["batch", 4])],
                          [vi("y", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / "two.onnx"
    onnx.save(m, p)
    with pytest.raises(InputError) as err:
        import_onnx(p)
    msg = str(err.value)
    assert "2 input(s)" in msg and "symbolic dims: batch, seq" in msg
    assert "--input-shape ids=batch,seq --input-shape mask=batch,4" in msg
    with pytest.raises(InputError, match=r"1 input\(s\).*'mask'.*--input-shape mask=batch,4"):
        import_onnx(p, {"ids": (1, 4)})
    assert import_onnx(p, {"ids": (1, 4), "mask": (1, 4)}).outputs[0].shape == (1, 4)


def test_input_shape_errors(mlp_path):
    with pytest.raises(InputError, match="not inputs of .*inputs are \\['x'\\]"):
        import_onnx(mlp_path, {"nope": (2, 16)})
    with pytest.raises(InputError, match="rank 3"):
        import_onnx(mlp_path, {"x": (2, 16, 1)})
    with pytest.raises(InputError, match="fixed and cannot become 5"):
        import_onnx(mlp_path, {"x": (5, 16)})


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-a-protobuf\xff\xff\xff")
    with pytest.raises(ModelError, match="corrupt.onnx"):
        import_onnx(bad)
    with pytest.raises(ModelError, match="directory"):
        import_onnx(tmp_path)


def test_unsupported_ops_listed_with_node_names_before_compiling():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1", domain="com.example"),
             helper.make_node("FancyOp", ["b"], ["c"], name="fancy_2", domain="com.example"),
             helper.make_node("OtherOp", ["c"], ["y"], name="other", domain="com.example")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    with pytest.raises(UnsupportedOpsError) as info:
        prepare(m)
    msg = str(info.value)
    assert "2 unsupported ONNX op type(s)" in msg
    assert "FancyOp: 2 node(s): 'fancy_1', 'fancy_2'" in msg and "OtherOp: 1 node(s): 'other'" in msg


def _computed_reshape_model():
    """x -> Shape -> Gather(0) -> Unsqueeze -> Concat([b, -1]) -> Reshape: a computed shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i0"], ["b"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq"),
        helper.make_node("Concat", ["b1", "m1"], ["newshape"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "newshape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
    ]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1"),
             numpy_helper.from_array(rng.standard_normal((24, 5)).astype(np.float32), "w")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_constant_folding_turns_computed_shapes_into_constants():
    proto, _, folded = prepare(_computed_reshape_model(), {"x": (3, 2, 3, 4)})
    assert folded >= 4
    assert [n.op_type for n in proto.graph.node] == ["Reshape", "MatMul"]
    im = import_onnx(_computed_reshape_model(), {"x": (3, 2, 3, 4)})
    assert im.outputs[0].shape == (3, 5)


def _two_round_reshape_model():
    """y = Reshape(x, [1, Shape(x)[1], -1]); z = Reshape(y, [Shape(y)[2], -1]): y's shape is
    known only once the first shape is folded, so the second chain folds in a second round
    (as in PP-OCRv4's attention blocks, which did not import)."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        # Shape -> Slice with starts/ends from Constant nodes, as paddle2onnx writes it
        helper.make_node("Constant", [], ["k1"], value=c("k1", [1]), name="const1"),
        helper.make_node("Constant", [], ["k2"], value=c("k2", [2]), name="const2"),
        helper.make_node("Shape", ["x"], ["s1"], name="shape1"),
        helper.make_node("Slice", ["s1", "k1", "k2"], ["g1"], name="slice1"),
        helper.make_node("Concat", ["one", "g1", "minus1"], ["shp1"], axis=0, name="concat1"),
        helper.make_node("Reshape", ["x", "shp1"], ["y"], name="reshape1"),
        helper.make_node("Relu", ["y"], ["yr"], name="relu"),
        helper.make_node("Shape", ["yr"], ["s2"], name="shape2"),
        helper.make_node("Gather", ["s2", "i2"], ["g2"], axis=0, name="gather2"),
        helper.make_node("Concat", ["g2", "minus1"], ["shp2"], axis=0, name="concat2"),
        helper.make_node("Reshape", ["yr", "shp2"], ["z"], name="reshape2"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[c("i2", [2]), c("one", [1]), c("minus1", [-1])])
    # opset 12 (PP-OCRv4's): ONNX shape inference does not propagate Slice data there
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 8
    return m


def test_folding_repeats_until_shapes_computed_from_folded_shapes_fold():
    proto, _, folded = prepare(_two_round_reshape_model(), {"x": (2, 4, 6)})
    assert [n.op_type for n in proto.graph.node] == ["Reshape", "Relu", "Reshape"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert list(inits["shp1"]) == [1, 4, -1] and list(inits["shp2"]) == [12, -1]
    assert folded == 8
    im = import_onnx(_two_round_reshape_model(), {"x": (2, 4, 6)})
    assert im.outputs[0].shape == (12, 4)


def test_folding_never_folds_weight_dequantize():
    w = numpy_helper.from_array(np.arange(-4, 4, dtype=np.int8).reshape(2, 4), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "ws")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["wf"], name="dq_w"),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          initializer=[w, s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    proto, _, folded = prepare(m)
    assert folded == 0 and [n.op_type for n in proto.graph.node] == ["DequantizeLinear", "MatMul"]


def test_shapes_flow_through_fakequantize_so_shapes_computed_after_it_fold():
    """The same two-round chain with a FakeQuantize where the Relu was (qcompile's PTQ of
    PP-OCRv4 puts one there): ONNX shape inference does not know FakeQuantize, so its output
    shape is carried over from its input, and the second Reshape's shape still folds."""
    m = _two_round_reshape_model()
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    fq = helper.make_node("FakeQuantize", ["y", "lo", "hi", "lo", "hi"], ["yr"], levels=256,
                          name="fq", domain="org.openvinotoolkit")
    nodes = [fq if n is relu else n for n in m.graph.node]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend([numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
                                numpy_helper.from_array(np.array(1.0, np.float32), "hi")])
    m.opset_import.append(helper.make_opsetid("org.openvinotoolkit", 1))
    proto, _, _ = prepare(m, {"x": (2, 4, 6)})
    assert [n.op_type for n in proto.graph.node] == ["Reshape", "FakeQuantize", "Reshape"]
    im = import_onnx(m, {"x": (2, 4, 6)})
    assert im.outputs[0].shape == (12, 4)


def test_folded_scalar_stays_a_scalar():
    """A scalar Constant index folded into an initializer keeps rank 0: Gather with a scalar
    index drops the axis (silero-vad's state[0] -> LSTM initial_h; as shape [1] it added a
    dim and the next Conv was imported as conv2d)."""
    idx = numpy_helper.from_array(np.array(1, np.int64), "k")
    nodes = [helper.make_node("Constant", [], ["i"], value=idx, name="const"),
             helper.make_node("Gather", ["x", "i"], ["y"], axis=0, name="gather")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    proto, _, folded = prepare(m)
    assert folded == 1 and list(proto.graph.initializer[0].dims) == []
    assert import_onnx(m).outputs[0].shape == (1, 4)


@pytest.mark.parametrize("bias", [False, True])
def test_1d_conv_imports_as_2d_and_matches_onnxruntime(bias, tmp_path):
    import onnxruntime as ort
    from qcompile.build import BuildConfig, build
    from qcompile.runtime import load

    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((6, 4, 5)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(r.standard_normal(6).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], name="conv", kernel_shape=[5], strides=[2],
                            pads=[2, 1], dilations=[1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 33])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 16])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "c.onnx")
    build(str(tmp_path / "c.onnx"), BuildConfig(target="host"), tmp_path / "b", quiet=True)
    x = r.standard_normal((1, 4, 33)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"x": x})[0]
    got = load(tmp_path / "b")({"x": x})["y"]
    assert got.shape == want.shape == (1, 6, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,bias", [(2, True), (2, False), (3, True)])
def test_conv_transpose_with_stride_equal_kernel_is_a_1x1_conv_and_a_depth_to_space(k, bias, tmp_path):
    """ConvTranspose with stride == kernel (DBNet's upsampling heads) is imported as a 1x1
    conv + depth-to-space (converters/conv_transpose.py); same numbers as ONNX Runtime."""
    import onnxruntime as ort
    from qcompile.build import BuildConfig, build
    from qcompile.runtime import load

    r = np.random.default_rng(k)
    inits = [numpy_helper.from_array(r.standard_normal((8, 3, k, k)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(r.standard_normal(3).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("ConvTranspose", ins, ["y"], name="up", kernel_shape=[k, k],
                            strides=[k, k])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5 * k, 7 * k])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    im = import_onnx(m)
    ops = {str(c.op.name) for blk in im.mod["main"].body.blocks for b in blk.bindings
           for c in [b.value] if hasattr(c, "op") and hasattr(c.op, "name")}
    assert "relax.nn.conv2d" in ops and "relax.nn.conv2d_transpose" not in ops
    onnx.save(m, tmp_path / "u.onnx")
    build(str(tmp_path / "u.onnx"), BuildConfig(target="host"), tmp_path / "b", quiet=True)
    x = r.standard_normal((1, 8, 5, 7)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "u.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(load(tmp_path / "b")({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
