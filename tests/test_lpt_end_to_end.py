"""End to end, one small model per input format: FakeQuantize, QDQ, QOperator.

`qcompile build` realizes every quantized op on integers (the per-op table says so, and only
the Softmax stays f32), the integer tensors of the compiled module equal qcompile.reference's
bit for bit, and the output agrees with the model run by onnxruntime / OpenVINO."""
import json

import numpy as np
import onnx
import pytest

from lpt_helpers import compile_run, fp32_cnn, fq_cnn, fq_model_levels16, ort_quantize
from qcompile import reference
from qcompile.build import BuildConfig, build
from qcompile.errors import QuantizationError
from qcompile.frontend import import_onnx
from qcompile.relay_passes import pipeline as lp
from qcompile.runtime import load
from qcompile.targets import all_targets


def passes(model):
    im = import_onnx(model)
    ctx = lp.LowPrecisionContext(spec=all_targets()["avx2"], node_names=im.node_names)
    return lp.run(im.mod, ctx), ctx


def last_int(mod):
    from tvm import relax

    outs = [b.value.args[0].name for blk in mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.dequantize"
            and "int" in str(b.value.args[0].ty.dtype)]
    return outs[-1]


def integers_exact(mod, x):
    cut = reference.cut_at(mod, [last_int(mod)])
    np.testing.assert_array_equal(compile_run(cut, [x]), reference.run(cut, [x]))


def test_fake_quantize_model(tmp_path, capsys):
    m = fq_cnn()
    onnx.save(m, tmp_path / "fq.onnx")
    res = build(str(tmp_path / "fq.onnx"), BuildConfig(target="avx2"), tmp_path / "b",
                quiet=True)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["precision_summary"] == "9 of 10 compute ops in INT8; f32: [Softmax 'prob']"
    rows = {r["node"]: r for r in meta["ops"]}
    assert rows["conv1"]["in_dtypes"] == ["u8", "s8"] and rows["conv1"]["out_dtype"] == "s32"
    assert rows["add"]["relax_op"] == "qcompile.qadd" and rows["relu1"]["precision"] == "fused"
    assert rows["prob"]["precision"] == "f32" and "no integer realization" in rows["prob"]["reason"]
    # the residual add writes over its dead skip input (use_inplace_outputs); the outputs
    # below stay bit-exact with the reference
    assert meta["inplace_calls"] == 1
    del res
    from qcompile.cli import main

    main(["inspect", str(tmp_path / "b"), "--not-int8"])
    out = capsys.readouterr().out
    assert "relu1" in out and "conv1" not in out
    assert out.strip().endswith("9 of 10 compute ops in INT8; f32: [Softmax 'prob']")
    assert "int8 kernels by dot-product variant: " in out     # fast / widen16 / widen
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    mod, _ = passes(m)
    integers_exact(mod, x)
    y = load(tmp_path / "b")({"input": x})["prob"]
    np.testing.assert_allclose(y, reference.run(mod, [x]), atol=1e-5)
    # the FakeQuantize graph itself, executed in f32 (the FakeQuantize formula of docs/architecture.md, which equals
    # OpenVINO's reference FakeQuantize bit for bit: test_reference_numerics)
    np.testing.assert_allclose(y, reference.run(import_onnx(m).mod, [x]), atol=1e-3)
    import openvino as ov
    core = ov.Core()
    cm = core.compile_model(core.read_model(str(tmp_path / "fq.onnx")), "CPU",
                            {"INFERENCE_PRECISION_HINT": "f32"})
    # OpenVINO's CPU plugin runs its own int8 realization; on this model it is ~0.1 away from
    # the FakeQuantize graph's f32 semantics (so is from us): compare the decision only
    assert np.argmax(np.asarray(cm({"input": x})[0])) == np.argmax(y)


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_onnxruntime_quantized_model(fmt):
    import onnxruntime as ort

    q = ort_quantize(fp32_cnn(), fmt=fmt)
    mod, ctx = passes(q)
    assert [e["node"] for e in ctx.unconverted] == [
        "prob" if fmt == "qdq" else "prob_quant"], ctx.unconverted     # only the softmax
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    integers_exact(mod, x)
    got = compile_run(mod, [x])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    # probabilities quantized to 1/256 by the model's last QuantizeLinear: a few steps apart
    # at most where an intermediate rounding went the other way
    assert np.abs(got - want).max() <= 4 / 256 + 1e-6


def test_strict_fails_naming_the_node_and_default_reports(tmp_path):
    m = fq_model_levels16()
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(QuantizationError, match=r"'fq16'.*levels=16"):
        build(str(tmp_path / "m.onnx"), BuildConfig(target="avx2", strict=True), tmp_path / "s",
              quiet=True)
    res = build(str(tmp_path / "m.onnx"), BuildConfig(target="avx2"), tmp_path / "d",
                quiet=True)
    assert any(e["node"] == "fq16" for e in res.meta["notes"])
    rows = {r["node"]: r for r in res.meta["ops"]}
    assert rows["conv"]["precision"] == "f32" and "not quantized" in rows["conv"]["reason"]


def test_fp32_model_passes_through_unchanged():
    from conftest import make_mlp

    im = import_onnx(make_mlp())
    ctx = lp.LowPrecisionContext(spec=all_targets()["avx2"], node_names=im.node_names)
    assert lp.run(im.mod, ctx).same_as(im.mod)


def test_1d_convs_run_in_int8_and_match_the_reference(tmp_path):
    """Conv over (N, C, W) signals (silero-vad's encoder, speech front ends) is imported as a
    2-D conv of height 1 (frontend/converters/conv1d.py) and realized in int8 like any other:
    strided, padded, dilated and grouped, each row int8, the output equal to the reference
    and to the FakeQuantize graph run in f32."""
    from lpt_helpers import OnnxBuilder

    b = OnnxBuilder(5)
    r = b.rng

    def conv(x, shape, name, **kw):
        wt = (r.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        bias = b.const((r.standard_normal(shape[0]) * 0.05).astype(np.float32), "b")
        return b.op("Conv", [x, b.weight_fq(wt), bias], name=name, kernel_shape=[shape[2]], **kw)

    x = b.fq("input", -2.0 * 128 / 127, 2.0, 256, name="fq_in")
    y = conv(x, (16, 4, 5), "c1", strides=[2], pads=[2, 2])
    y = b.fq(b.op("Relu", [y], name="r1"), 0.0, 4.0, 256, name="fq1")
    y = conv(y, (16, 4, 3), "c2", group=4, dilations=[2], pads=[2, 2])
    y = b.fq(b.op("Relu", [y], name="r2"), 0.0, 4.0, 256, name="fq2")
    conv(y, (8, 16, 1), "c3")
    m = b.model([("input", [1, 4, 64])], [("c3", [1, 8, 32])])
    onnx.save(m, tmp_path / "c1d.onnx")
    build(str(tmp_path / "c1d.onnx"), BuildConfig(target="host"), tmp_path / "b", quiet=True)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    rows = {r["node"]: r for r in meta["ops"]}
    for c in ("c1", "c2", "c3"):
        assert rows[c]["precision"] == "int8" and rows[c]["relax_op"] == "relax.nn.conv2d", rows[c]
    ops = meta["int8_kernels"]["ops"]
    assert sum(1 for o in ops if o.get("kernel") == "conv2d_nchwc") == 2
    assert [o["left_alone"] for o in ops if "left_alone" in o] == [
        "grouped conv2d (groups=4) has no int8 kernel"]      # recorded, runs the generic one
    xin = np.random.default_rng(1).uniform(-2, 2, (1, 4, 64)).astype(np.float32)
    mod, _ = passes(m)
    y = load(tmp_path / "b")({"input": xin})["c3"]
    np.testing.assert_array_equal(y, reference.run(mod, [xin]))
    # the f32 FakeQuantize graph: equal but where an activation sits on a rounding boundary
    # of a requantize (one level of fq1/fq2, times a weight column: < 0.05)
    f32 = reference.run(import_onnx(m).mod, [xin])
    assert np.mean(np.abs(y - f32) < 1e-4) > 0.9 and np.abs(y - f32).max() < 0.05
