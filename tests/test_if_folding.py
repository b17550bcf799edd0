"""`If` with a constant condition inlined by the frontend's folding (and the PTQ), inputs
frozen with `--input-value`, and control flow that stays reported (models from onnx.helper)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import InputError, QuantizationError
from qcompile.frontend import prepare


def _ops(graph) -> list[str]:
    return [n.op_type for n in graph.node]


def _model(nodes, inputs, outputs, inits, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _branchy_model(cond: bool) -> onnx.ModelProto:
    """y = If(cond): then: ((x + w) * k), then an inner If on a Shape-derived condition
    (true) picks Relu over Neg; else: x - w. Then z = y + w. `w` is an outer initializer read
    inside the branches, `k` the then-branch's own initializer; the then branch defines a
    tensor `z` as well (a name the outer graph uses too: it must be renamed)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "w")
    k = numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "k")
    f = TensorProto.FLOAT
    inner_then = helper.make_graph([helper.make_node("Relu", ["z"], ["r_then"], name="relu")],
                                   "inner_then", [], [helper.make_tensor_value_info("r_then", f,
                                                                                    None)])
    inner_else = helper.make_graph([helper.make_node("Neg", ["z"], ["r_else"], name="neg")],
                                   "inner_else", [], [helper.make_tensor_value_info("r_else", f,
                                                                                    None)])
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["t1"], name="add"),
         helper.make_node("Mul", ["t1", "k"], ["z"], name="mul"),
         helper.make_node("Shape", ["z"], ["zs"], name="shape"),
         helper.make_node("Constant", [], ["one"], name="one",
                          value=numpy_helper.from_array(np.array(1, np.int64))),
         helper.make_node("Gather", ["zs", "one"], ["d1"], name="gather", axis=0),
         helper.make_node("Constant", [], ["eight"], name="eight",
                          value=numpy_helper.from_array(np.array(8, np.int64))),
         helper.make_node("Equal", ["d1", "eight"], ["inner_cond"], name="eq"),
         helper.make_node("If", ["inner_cond"], ["r"], name="inner_if",
                          then_branch=inner_then, else_branch=inner_else)],
        "then", [], [helper.make_tensor_value_info("r", f, None)], initializer=[k])
    els = helper.make_graph([helper.make_node("Sub", ["x", "w"], ["e1"], name="sub")],
                            "else", [], [helper.make_tensor_value_info("e1", f, None)])
    c = numpy_helper.from_array(np.array(cond), "cond")
    return _model(
        [helper.make_node("If", ["cond"], ["y"], name="outer_if", then_branch=then,
                          else_branch=els),
         helper.make_node("Add", ["y", "w"], ["z"], name="post")],
        [helper.make_tensor_value_info("x", f, [1, 8])],
        [helper.make_tensor_value_info("y", f, [1, 8]),
         helper.make_tensor_value_info("z", f, [1, 8])],
        [w, c])


def _ort(model, feeds):
    import onnxruntime as ort
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


@pytest.mark.parametrize("cond", [True, False])
def test_constant_cond_if_folds_to_the_taken_branch_and_builds_like_onnxruntime(cond, tmp_path):
    import qcompile
    from qcompile.build import BuildConfig, build

    m = _branchy_model(cond)
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    proto, _, folded = prepare(p)
    onnx.checker.check_model(proto)
    assert "If" not in _ops(proto.graph) and folded >= 1
    if cond:   # the taken branch's nodes, the inner If resolved to its Relu; `z` renamed
        assert {"Add", "Mul", "Relu"} <= set(_ops(proto.graph)) and "Neg" not in _ops(proto.graph)
        outs = [o for n in proto.graph.node for o in n.output]
        assert len(outs) == len(set(outs)), "inlined names must stay unique"
        assert any(o.startswith("z__inl") for o in outs)
    else:
        assert "Sub" in _ops(proto.graph) and "Mul" not in _ops(proto.graph)
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    ref = _ort(m, {"x": x})
    build(str(p), BuildConfig(), tmp_path / "b", quiet=True)
    got = qcompile.load(tmp_path / "b")({"x": x})
    for name in ("y", "z"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6)


def _cond_conv_model(if_name="mode_if"):
    """mode (int64 scalar) == 1 ? Relu(Conv(x, w_then)) : Conv(x, w_else), then a top-level
    Conv; the branch weights are outer initializers only the branches read."""
    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w_then", (4, 3, 3, 3)), ("w_else", (4, 3, 3, 3)),
                          ("w_top", (4, 4, 1, 1)))]
    then = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_then"], ["c_then"], name="conv_then", pads=[1] * 4),
         helper.make_node("Relu", ["c_then"], ["r_then"], name="relu_then")],
        "then", [], [helper.make_tensor_value_info("r_then", f, None)])
    els = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_else"], ["c_else"], name="conv_else", pads=[1] * 4)],
        "else", [], [helper.make_tensor_value_info("c_else", f, None)])
    return _model(
        [helper.make_node("Constant", [], ["one"], name="one",    # folded: the build drops
                          value=numpy_helper.from_array(np.array(1, np.int64))),  # no weight
         helper.make_node("Equal", ["mode", "one"], ["is_one"], name="eq"),
         helper.make_node("If", ["is_one"], ["h"], name=if_name, then_branch=then,
                          else_branch=els),
         helper.make_node("Conv", ["h", "w_top"], ["y"], name="conv_top")],
        [helper.make_tensor_value_info("x", f, [1, 3, 8, 8]),
         helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", f, [1, 4, 8, 8])], inits)


def test_frozen_input_if_branch_conv_is_quantized_to_int8(tmp_path, capsys):
    import qcompile
    from qcompile.cli import main

    m = _cond_conv_model()
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    q, rep = tmp_path / "q.onnx", tmp_path / "rep.json"
    assert main(["quantize", str(p), "--data", str(tmp_path / "calib.npz"), "--subset-size", "8",
                 "--input-value", "mode=1", "-o", str(q), "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert "conv_then" in r["quantized_ops"]["nodes"] and "conv_top" in r["quantized_ops"]["nodes"]
    assert r["control_flow"]["frozen_inputs"] == {"mode": [1]}
    assert [e["node"] for e in r["control_flow"]["inlined_ifs"]] == ["mode_if"]
    assert r["config"]["input_values"] == {"mode": [1]}
    qm = onnx.load(q)
    assert [i.name for i in qm.graph.input] == ["x"] and "If" not in _ops(qm.graph)
    assert main(["build", str(q), "-o", str(tmp_path / "b"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    rows = {row["node"]: row for row in meta["ops"]}
    assert rows["conv_then"]["precision"] == "int8" and rows["conv_top"]["precision"] == "int8"
    assert meta["precision_summary"].startswith("2 of ")
    # the int8 build agrees with fp32 (mode=1) closely
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = _ort(m, {"x": x, "mode": np.array(1, np.int64)})["y"]
    got = qcompile.load(tmp_path / "b")({"x": x})["y"]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    capsys.readouterr()


def test_input_value_flag_builds_fp32_and_is_recorded(tmp_path):
    from qcompile.cli import main

    p = tmp_path / "m.onnx"
    onnx.save(_cond_conv_model(), p)
    assert main(["build", str(p), "-o", str(tmp_path / "b"), "--quiet",
                 "--input-value", "mode=0"]) == 0
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["config"]["input_values"] == {"mode": [0]}
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert {r["node"] for r in meta["ops"]} == {"conv_else", "conv_top"}
    from qcompile.build import BuildConfig
    from qcompile.config import from_dict
    assert from_dict(BuildConfig, meta["config"]).input_values == {"mode": (0,)}


def test_freeze_errors_name_the_input_and_the_flag(tmp_path):
    from qcompile.cli import main
    from qcompile.frontend.control_flow import freeze_inputs

    m = _cond_conv_model()
    with pytest.raises(InputError, match=r"--input-value names 'nope'.*inputs are \['x', 'mode'\]"):
        freeze_inputs(m, {"nope": (1,)})
    with pytest.raises(InputError, match=r"--input-value mode gives 2 value\(s\).*input 'mode'.*"
                                         r"shape \[\]"):
        freeze_inputs(m, {"mode": (1, 2)})
    with pytest.raises(InputError,
                       match=r"--input-value x gives 3 value\(s\).*\[1, 3, 8, 8\].*192"):
        freeze_inputs(m, {"x": (1, 2, 3)})
    with pytest.raises(InputError, match=r"mode=1.5.*int64.*not an integer"):
        freeze_inputs(m, {"mode": (1.5,)})
    frozen = freeze_inputs(m, {"mode": (1,)})
    assert [i.name for i in frozen.graph.input] == ["x"]
    assert numpy_helper.to_array(next(t for t in frozen.graph.initializer
                                      if t.name == "mode")).dtype == np.int64
    assert freeze_inputs(frozen, {"mode": (1,)}) is not None     # the same value again: fine
    with pytest.raises(InputError, match=r"'mode' is not an input.*constant holding 1"):
        freeze_inputs(frozen, {"mode": (2,)})
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    assert main(["build", str(p), "-o", str(tmp_path / "b"), "--input-value", "sr=16000"]) == 2
    with pytest.raises(SystemExit):    # argparse: no '=' / not a number
        main(["build", str(p), "-o", str(tmp_path / "b"), "--input-value", "mode"])
    with pytest.raises(SystemExit):
        main(["build", str(p), "-o", str(tmp_path / "b"), "--input-value", "mode=abc"])


def test_non_constant_if_is_reported_by_quantize_and_build(tmp_path):
    from qcompile.build import BuildConfig, build
    from qcompile.quantization import quantize_detailed

    m = _cond_conv_model()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
              "mode": np.array(1, np.int64)} for _ in range(4)]
    r = quantize_detailed(m, calib, subset_size=4).report
    assert r["quantized_ops"]["nodes"] == ["conv_top"]
    reasons = {n: why for why, nodes in r["fp32_ops"]["by_reason"].items() for n in nodes}
    for node in ("conv_then", "relu_then", "conv_else"):
        assert "inside If 'mode_if'" in reasons[node] and "--input-value mode=" in reasons[node]
    assert r["control_flow"]["nodes_in_bodies"] == 3 and r["control_flow"]["owners"] == ["mode_if"]
    # the build's precision table lists the branch convs as f32, with the same reason
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    res = build(str(p), BuildConfig(), tmp_path / "b", quiet=True)
    rows = {row["node"]: row for row in res.meta["ops"]}
    assert rows["conv_then"]["precision"] == "f32"
    assert "inside If 'mode_if'" in rows["conv_then"]["reason"]
    assert rows["conv_else"]["precision"] == "f32"
    assert res.meta["precision_summary"].startswith("0 of 4 compute ops")


def test_nothing_to_quantize_outside_a_non_constant_if_says_why():
    from qcompile.quantization import quantize_detailed

    m = _cond_conv_model()
    top = next(n for n in m.graph.node if n.name == "conv_top")
    top.op_type = "Identity"          # only the branch convs are left
    del top.input[1:]
    calib = [{"x": np.zeros((1, 3, 8, 8), np.float32), "mode": np.array(1, np.int64)}]
    with pytest.raises(QuantizationError, match=r"nothing to quantize.*Conv x2.*inside If "
                                                r"'mode_if'.*--input-value mode=VALUE"):
        quantize_detailed(m, calib, subset_size=1)


def test_compile_freezes_the_input_for_the_ptq_the_build_and_the_gate(tmp_path, capsys):
    from qcompile.cli import main

    p = tmp_path / "m.onnx"
    onnx.save(_cond_conv_model(), p)
    rng = np.random.default_rng(4)
    np.save(tmp_path / "calib.npy", rng.standard_normal((12, 1, 3, 8, 8)).astype(np.float32))
    assert main(["compile", str(p), "--data", str(tmp_path / "calib.npy"), "--holdout", "4",
                 "--input-value", "mode=1", "-o", str(tmp_path / "b"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["compile"]["quantize_config"]["input_values"] == {"mode": [1]}
    assert meta["compile"]["gate"]["passed"] and [i["name"] for i in meta["inputs"]] == ["x"]
    rows = {row["node"]: row for row in meta["ops"]}
    assert rows["conv_then"]["precision"] == "int8" and "conv_else" not in rows
    capsys.readouterr()
