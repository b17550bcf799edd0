"""The accuracy-aware loop: a metric that the fully quantized model fails forces layers back to
fp32, most sensitive first, until the drop is met; what was reverted is reported."""
import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net, fq_nodes, run_ort  # noqa: E402

from qcompile.errors import QuantizationError  # noqa: E402
from qcompile.quantization import cli_quantize, quantize_detailed  # noqa: E402
from qcompile.quantization.metrics import load_metric  # noqa: E402

DATA = conv_data(10)
REF = [run_ort(conv_net(), {"input": x[None]})[0] for x in DATA]


def closeness(predict, samples):
    """Higher is better: minus the worst abs error against the fp32 outputs (x1000)."""
    ref = {id(s): r for s, r in zip(SAMPLES, REF)}
    return -1000 * max(float(np.abs(predict(s)[0] - ref.get(id(s), REF[i])).max())
                       for i, s in enumerate(samples))


SAMPLES = [{"input": x[None]} for x in DATA]


def _run(**kw):
    return quantize_detailed(conv_net(), SAMPLES, target="avx512-vnni", metric=closeness,
                             validation_dataset=SAMPLES, **kw)


def test_metric_forces_fallback_and_report_lists_reverts():
    base = _run(max_drop=1e9)                       # loose: nothing reverted
    aa = base.report["accuracy_aware"]
    assert aa["met"] and not aa["reverted"] and aa["metric_fp32"] == 0
    initial = aa["drop_final"]
    assert initial > 0
    r = _run(max_drop=0.3 * initial)                 # needs some layers back in fp32
    aa = r.report["accuracy_aware"]
    assert aa["met"] and 1 <= len(aa["reverted"]) < len(r.plan.ops)
    assert aa["drop_final"] <= 0.3 * initial
    # ranked by sensitivity, reverted in that order, one at a time
    gains = [x["sqnr_gain_db"] for x in aa["ranking"]]
    assert gains == sorted(gains, reverse=True)
    assert aa["reverted"] == [x["node"] for x in aa["ranking"][:len(aa["reverted"])]]
    assert [s["reverted"] for s in aa["steps"]] == aa["reverted"]
    # reverted ops read fp32 inputs in the written model and are reported as fp32
    m = r.model()
    for name in aa["reverted"]:
        node = next(n for n in m.graph.node if n.name == name)
        assert not any(t.endswith("/fq") for t in node.input)
        assert name in r.report["fp32_ops"]["by_reason"][
            "reverted to fp32 by the accuracy-aware loop"]
    assert name not in r.report["quantized_ops"]["nodes"]
    # and the final model really meets the metric
    from qcompile.quantization.accuracy_aware import _predictor
    assert -closeness(_predictor(r.model("sim"), 1), SAMPLES) <= 0.3 * initial + 1e-6


def test_not_met_is_reported_and_cli_exits_1(tmp_path):
    r = _run(max_drop=0.0, max_reverts=1)
    aa = r.report["accuracy_aware"]
    assert not aa["met"] and len(aa["reverted"]) == 1
    metric_file = tmp_path / "mymetric.py"
    metric_file.write_text(
        "import numpy as np\n"
        "def neg_mean_abs(predict, samples):\n"
        "    return -float(np.mean([np.abs(predict(s)[0]).mean() for s in samples]))\n")
    onnx.save(conv_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "d.npy", DATA)
    p = argparse.ArgumentParser()
    cli_quantize.add_arguments(p)
    args = p.parse_args([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npy"),
                         "--target", "avx512-vnni", "--metric", f"{metric_file}:neg_mean_abs",
                         "--max-drop", "0", "--max-reverts", "1", "--drop-type", "relative",
                         "-o", str(tmp_path / "q.onnx")])
    code = cli_quantize.run(args)
    assert (tmp_path / "q.onnx").exists()
    assert code in (0, 1)        # 1 unless the metric happens to be met after one revert
    rep = __import__("qcompile.quantization", fromlist=["read_report"]).read_report(
        tmp_path / "q.onnx")
    assert rep["accuracy_aware"]["drop_type"] == "relative"
    assert code == (0 if rep["accuracy_aware"]["met"] else 1)


def test_metric_loading_errors():
    with pytest.raises(QuantizationError, match="MODULE:FUNCTION"):
        load_metric("nocolon")
    with pytest.raises(QuantizationError, match="cannot import"):
        load_metric("no_such_module_xyz:f")
    with pytest.raises(QuantizationError, match="has no function"):
        load_metric("math:nope")
    assert load_metric("math:sqrt")(4) == 2


def test_fq_model_of_reverted_layer_has_no_weight_quantizer():
    r = _run(max_drop=0.0)                         # reverts until exact: everything
    aa = r.report["accuracy_aware"]
    assert aa["met"] and set(aa["reverted"]) == set(r.plan.ops)
    assert not fq_nodes(r.model())
