"""LSTM / GRU (qcompile/frontend/converters/rnn.py) against ONNX Runtime, every output."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.build import BuildConfig, build
from qcompile.errors import ModelError


def _rnn_model(op, seq=5, batch=2, inp=6, hidden=8, direction="forward", bias=True,
               init=True, peep=False, **attrs):
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    g = 4 if op == "LSTM" else 3
    inits = [numpy_helper.from_array((rng.standard_normal((dirs, g * hidden, inp)) * 0.4)
                                     .astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((dirs, g * hidden, hidden)) * 0.4)
                                     .astype(np.float32), "R")]
    names = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((dirs, 2 * g * hidden)) * 0.2).astype(np.float32), "B"))
        names[3] = "B"
    if init:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((dirs, batch, hidden)) * 0.5).astype(np.float32), "h0"))
        names[5] = "h0"
        if op == "LSTM":
            inits.append(numpy_helper.from_array(
                (rng.standard_normal((dirs, batch, hidden)) * 0.5).astype(np.float32), "c0"))
            names[6] = "c0"
    if peep:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((dirs, 3 * hidden)) * 0.3).astype(np.float32), "P"))
        names[7] = "P"
    while names and names[-1] == "":
        names.pop()
    outs = ["y", "yh", "yc"] if op == "LSTM" else ["y", "yh"]
    node = helper.make_node(op, names, outs, name="rnn", hidden_size=hidden,
                            direction=direction, **attrs)
    shapes = {"y": [seq, dirs, batch, hidden], "yh": [dirs, batch, hidden],
              "yc": [dirs, batch, hidden]}
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@pytest.mark.parametrize("op, kw", [
    ("LSTM", {}),
    ("LSTM", {"direction": "bidirectional", "peep": True}),
    ("LSTM", {"direction": "reverse", "bias": False, "init": False}),
    ("GRU", {}),
    ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}),
    ("GRU", {"direction": "reverse", "bias": False, "init": False}),
])
def test_rnn_matches_onnxruntime(op, kw, tmp_path):
    import onnxruntime as ort

    import qcompile

    m = _rnn_model(op, **kw)
    onnx.checker.check_model(m)
    onnx.save(m, tmp_path / "m.onnx")
    build(str(tmp_path / "m.onnx"), BuildConfig(), tmp_path / "b", quiet=True)
    x = np.random.default_rng(1).standard_normal((5, 2, 6)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {"x": x})
    got = qcompile.load(tmp_path / "b")({"x": x})
    for o, r in zip(m.graph.output, ref):
        np.testing.assert_allclose(got[o.name], r, rtol=1e-5, atol=1e-5, err_msg=o.name)


def test_unsupported_rnn_attribute_names_the_node(tmp_path):
    m = _rnn_model("LSTM", clip=3.0)
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"LSTM 'rnn': attribute clip"):
        build(str(tmp_path / "m.onnx"), BuildConfig(), tmp_path / "b", quiet=True)
