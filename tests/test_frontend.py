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
    with pytest.raises(InputError, match=r"--input-shape x=N,16"):
        import_onnx(p)
    im = import_onnx(p, {"x": (3, 16)})
    assert im.inputs[0].shape == (3, 16) and im.outputs[0].shape == (3, 8)


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
