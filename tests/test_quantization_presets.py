"""Presets, the target's rules data, FakeQuantize placement, and round trips of both output
formats through OpenVINO (FakeQuantize) and ONNX Runtime (QDQ)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import (REPO, conv_data, conv_net, fq_nodes, init_value,  # noqa
                                       mlp, run_openvino, run_ort, sqnr)

from qcompile import targets  # noqa: E402
from qcompile.errors import TargetError  # noqa: E402
from qcompile.quantization import quantize, quantize_detailed, read_report  # noqa: E402
from qcompile.quantization.rules import parse_rules, rules_for_target  # noqa: E402


def _ranges(model, tensor):
    n = fq_nodes(model)[tensor]
    return init_value(model, n.input[1]), init_value(model, n.input[2]), n


def test_performance_preset():
    m = quantize(conv_net(), conv_data(8), preset="performance", target="avx512-vnni")
    fqs = fq_nodes(m)
    # activation inputs of Conv, Add, Gemm, GlobalAveragePool, Concat; weights of the convs/fc
    assert {"input", "r1", "c2", "sc", "r2", "c3", "cat", "flat"} <= set(fqs)
    assert {"w1", "w2", "wsc", "w3", "wfc"} <= set(fqs)
    # after ReLU: u8 [0, max]
    il, ih, n = _ranges(m, "r1")
    assert il == 0 and ih > 0 and n.attribute[0].i == 256
    # signed activation: symmetric [-m*128/127, m]
    il, ih, _ = _ranges(m, "sc")
    assert il == pytest.approx(-ih * 128 / 127)
    # weights: per output channel, symmetric, 255 levels, broadcast on axis 0 (Conv) / 0 (Gemm
    # with transB=1)
    il, ih, n = _ranges(m, "w2")
    assert il.shape == (8, 1, 1, 1) and np.array_equal(il, -ih) and n.attribute[0].i == 255
    il, ih, _ = _ranges(m, "wfc")
    assert il.shape == (10, 1)
    rep = read_report(m)
    assert rep["preset"]["name"] == "performance" and rep["target"] == "avx512-vnni"


def test_mixed_preset_is_asymmetric_with_integer_zero_point():
    m = quantize(conv_net(), conv_data(8), preset="mixed", target="avx512-vnni")
    il, ih, _ = _ranges(m, "sc")
    s = (ih - il) / 255
    assert il != pytest.approx(-ih * 128 / 127)
    assert -il / s == pytest.approx(round(float(-il / s)), abs=1e-4)
    il, ih, _ = _ranges(m, "r1")                  # still u8 from 0 after ReLU
    assert il == 0
    il, ih, _ = _ranges(m, "w1")                  # weights stay symmetric
    assert np.array_equal(il, -ih)


def test_unified_scales_for_concat_and_constant_bias_add_is_not_quantized():
    r = quantize_detailed(mlp(), np.random.default_rng(0).standard_normal((8, 1, 16))
                          .astype(np.float32), target="avx512-vnni")
    # x + bias after a MatMul is part of the layer, not an int8 add
    assert "fc1_bias" in r.plan.fp32 and "x + constant" in r.plan.fp32["fc1_bias"][1]
    m = quantize(conv_net(), conv_data(8), target="avx512-vnni")
    a, b = _ranges(m, "r2"), _ranges(m, "c3")
    assert a[0] == b[0] and a[1] == b[1]          # Concat inputs share one range
    rep = read_report(m)
    groups = {q["tensor"]: q.get("unified_group") for q in rep["quantizers"]}
    assert groups["r2"] and groups["r2"] == groups["c3"]


def test_rules_come_from_the_target_data(tmp_path, monkeypatch):
    """A target whose rules do not list Add / Concat gets no quantizers for them."""
    tdir = tmp_path / "targets"
    shutil.copytree(REPO / "targets", tdir)
    rules = (tdir / "_rules" / "cpu.toml").read_text()
    blocks = rules.split("[[op]]")
    keep = [b for b in blocks[1:] if 'type = "Add"' not in b and 'type = "Concat"' not in b]
    (tdir / "_rules" / "noadd.toml").write_text("[[op]]".join([blocks[0]] + keep))
    spec = (tdir / "avx512-vnni.toml").read_text().replace('name = "avx512-vnni"',
                                                           'name = "noadd"')
    (tdir / "noadd.toml").write_text(spec.replace('quantization_rules = "cpu"',
                                                  'quantization_rules = "noadd"'))
    monkeypatch.setenv("QCOMPILE_TARGETS_DIR", str(tdir))
    targets.all_targets.cache_clear()
    try:
        r = quantize_detailed(conv_net(), conv_data(4), target="noadd",
                              fast_bias_correction=False)
        assert "add" in r.plan.fp32 and "concat" in r.plan.fp32
        assert "Add is not quantized by targets/_rules/noadd.toml" in r.plan.fp32["add"][1]
        assert "conv2" in r.plan.ops
    finally:
        targets.all_targets.cache_clear()


def test_rules_schema_is_checked():
    _, rules = rules_for_target("avx512-vnni")
    assert set(rules.presets) >= {"performance", "mixed"}
    assert rules.ops["Concat"].unified_scales and rules.ops["Add"].computed_inputs_only
    with pytest.raises(TargetError, match="unknown key"):
        parse_rules({"op": [{"type": "Conv", "activation_input": [0]}]}, "x.toml")
    with pytest.raises(TargetError, match="preset 'fast'"):
        rules.preset("fast")


@pytest.mark.parametrize("preset", ["performance", "mixed"])
def test_fakequantize_round_trip_in_openvino(preset):
    """OpenVINO reads the FakeQuantize model and computes what qcompile's emulation computes;
    its int8 kernels load it too."""
    data = conv_data(12)
    r = quantize_detailed(conv_net(), data[:8], preset=preset, target="avx512-vnni")
    fq, sim = r.model("fq"), r.model("sim")
    for x in data[8:]:
        feed = {"input": x[None]}
        ref = run_ort(conv_net(), feed)[0]
        ov_out = run_openvino(fq, feed)[0]
        sim_out = run_ort(sim, feed)[0]
        assert sqnr(sim_out, ov_out) > 40            # same numerics (ties may differ by 1 LSB)
        assert sqnr(ref, ov_out) > 25                # and close to fp32
        int8 = run_openvino(fq, feed, emulate=False)[0]
        assert sqnr(ref, int8) > 15                  # int8 kernels (may saturate without VNNI)
    import openvino as ov
    ops = {o.get_type_name() for o in ov.Core().read_model(fq.SerializeToString(), b"")
           .get_ordered_ops()}
    assert "FakeQuantize" in ops


@pytest.mark.parametrize("preset", ["performance", "mixed"])
def test_qdq_round_trip_in_onnxruntime(preset):
    data = conv_data(12)
    r = quantize_detailed(conv_net(), data[:8], preset=preset, target="avx512-vnni",
                          format="qdq")
    qdq, sim = r.model(), r.model("sim")
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "FakeQuantize" not in ops
    w_dq = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and
            n.input[0] == "w2/fq/quantized"][0]
    assert init_value(qdq, w_dq.input[0]).dtype == np.int8
    for x in data[8:]:
        feed = {"input": x[None]}
        assert sqnr(run_ort(sim, feed)[0], run_ort(qdq, feed)[0]) > 40   # ties may flip 1 LSB
        ref = run_ort(conv_net(), feed)[0]
        assert sqnr(ref, run_ort(qdq, feed, optimize=True)[0]) > 15


def test_qdq_upgrades_old_opsets():
    q = quantize(conv_net(opset=11), conv_data(4), format="qdq", target="avx512-vnni")
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    run_ort(q, {"input": conv_data(1)})


def test_everything_left_in_fp32_is_reported():
    r = quantize_detailed(conv_net(), conv_data(4), target="avx512-vnni")
    names = {n.name for n in r.prepared.graph.node}
    assert set(r.plan.ops) | set(r.plan.fp32) == names
    rep = r.report
    assert rep["fp32_ops"]["count"] == len(r.plan.fp32)
    assert sum(len(v) for v in rep["fp32_ops"]["by_reason"].values()) == len(r.plan.fp32)


def test_add_before_fp32_compute_stays_fp32():
    """require_quantized_consumer (cpu.toml, Add): a residual add feeding LayerNormalization
    is not quantized; one feeding a quantized op is."""
    from onnx import TensorProto, helper, numpy_helper
    from test_quantization_helpers import make_model
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, "w")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, "w2")
    g = numpy_helper.from_array(np.ones(16, np.float32), "g")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "x"], ["res"], name="residual"),
             helper.make_node("LayerNormalization", ["res", "g"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "ln"], ["res2"], name="residual2"),
             helper.make_node("MatMul", ["res2", "w2"], ["y"], name="mm3")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], [w, w2, g])
    r = quantize_detailed(m, rng.standard_normal((4, 1, 4, 16)).astype(np.float32),
                          target="avx512-vnni")
    assert "feeds fp32 compute (LayerNormalization 'ln')" in r.plan.fp32["residual"][1]
    assert "residual2" in r.plan.ops and {"mm", "mm2", "mm3"} <= set(r.plan.ops)


def test_attention_probabilities_matmul_stays_fp32():
    """fp32_if_input_from = ["Softmax"] (cpu.toml, MatMul): softmax(QK^T) x V stays fp32,
    Q x K^T is quantized on both inputs."""
    from onnx import TensorProto, helper, numpy_helper
    from test_quantization_helpers import make_model
    rng = np.random.default_rng(0)
    wq, wk, wv = (numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n)
                  for n in ("wq", "wk", "wv"))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             helper.make_node("Transpose", ["p"], ["pt"], name="pt", perm=[0, 1, 2]),
             helper.make_node("MatMul", ["pt", "v"], ["y"], name="pv")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
                   [wq, wk, wv])
    r = quantize_detailed(m, rng.standard_normal((4, 1, 4, 8)).astype(np.float32),
                          target="avx512-vnni")
    assert "reads the output of Softmax 'softmax'" in r.plan.fp32["pv"][1]
    qk = r.plan.ops["qk"].inputs
    assert {r.plan.quantizers[q].kind for q in qk.values()} == {"activation"} and len(qk) == 2


def test_overflow_fix_auto_follows_the_target_and_enables_the_fast_kernels(tmp_path):
    """--overflow-fix auto (default) reads the target's data: 7-bit weights for avx2 (a
    `widen` target), so every conv/dense of the build may use the saturating vpmaddubsw pair,
    proven exact per layer; 8-bit weights for avx512-vnni (vpdpbusd cannot saturate)."""
    import json

    import onnx

    from qcompile.build import BuildConfig, build

    r2 = quantize_detailed(conv_net(), conv_data(8), target="avx2")
    rv = quantize_detailed(conv_net(), conv_data(8), target="avx512-vnni")
    assert r2.report["config"]["overflow_fix"] == "all"
    assert rv.report["config"]["overflow_fix"] == "none"
    for name, r in (("q7", r2), ("q8", rv)):
        onnx.save(r.model("fq"), tmp_path / f"{name}.onnx")
        build(str(tmp_path / f"{name}.onnx"), BuildConfig(target="avx2"), tmp_path / name,
              quiet=True)
    k7 = json.loads((tmp_path / "q7" / "model.json").read_text())["int8_kernels"]
    v7 = k7["by_variant"]
    v8 = json.loads((tmp_path / "q8" / "model.json").read_text())["int8_kernels"]["by_variant"]
    # 7-bit weights: every direct kernel is the fast pair; small 3x3 stride-1 layers run as
    # Winograd (an s16 GEMM, variant widen16) instead, where that is faster still
    direct = [op for op in k7["ops"] if op.get("kernel") != "conv2d_winograd_nchwc"
              and "left_alone" not in op]
    assert {op["variant"] for op in direct} == {"fast"} and len(direct) >= 3
    assert set(v7) <= {"fast", "widen16"}
    assert v7.get("widen16", 0) == k7["by_kernel"].get("conv2d_winograd_nchwc", 0)
    assert "fast" not in v8 or set(v8) != {"fast"}     # 8-bit weights: exact widened kernels
