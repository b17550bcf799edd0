"""`qcompile compile`: fp32 ONNX -> PTQ -> int8 build -> accuracy gate, through the CLI."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net  # noqa: E402

from qcompile import cli  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("compile")
    onnx.save(conv_net(with_concat=False), d / "m.onnx")
    np.save(d / "calib.npy", conv_data(24))
    return d


def test_compile_gate_passes_and_is_recorded(files, capsys):
    out = files / "b"
    rc = cli.main(["compile", str(files / "m.onnx"), "--data", str(files / "calib.npy"),
                   "--holdout", "8", "--subset-size", "100", "-o", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "passed" in text and "8 held-back samples" in text
    meta = json.loads((out / "model.json").read_text())
    c = meta["compile"]
    assert c["calibration_samples"] == 16            # 24 samples, the last 8 held back
    assert c["gate"]["passed"] and c["gate"]["kind"] == "sqnr" and c["gate"]["samples"] == 8
    assert c["gate"]["sqnr_db"] >= 20.0 and c["quantized_ops"] >= 3
    assert meta["files"]["quantized_model"] == "model_int8.onnx"
    assert meta["checksums"]["model_int8.onnx"]      # sealed: the PTQ model is part of it
    q = onnx.load(out / "model_int8.onnx")
    assert any(n.op_type == "FakeQuantize" for n in q.graph.node)
    # the int8 build really is int8
    n_int8, _, n_all = meta["precision_summary"].split(" compute ops")[0].split()[:3]
    assert int(n_int8) == int(n_all) >= 3, meta["precision_summary"]
    import qcompile
    m = qcompile.load(out)
    got = m({"input": conv_data(1, seed=7)})
    assert got["logits"].shape == (1, 10)


def test_compile_gate_failure_exits_1_and_says_so(files, capsys):
    out = files / "fail"
    rc = cli.main(["compile", str(files / "m.onnx"), "--data", str(files / "calib.npy"),
                   "--min-sqnr", "200", "-o", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "FAILED" in cap.out and "accuracy gate" in cap.err
    assert json.loads((out / "model.json").read_text())["compile"]["gate"]["passed"] is False


def test_compile_with_metric_gate(files, tmp_path, capsys):
    (tmp_path / "mymetric.py").write_text(
        "import numpy as np\n"
        "def neg_mse(predict, samples):\n"
        "    return -float(np.mean([np.mean(predict(s)[0] ** 2) for s in samples]))\n")
    rc = cli.main(["compile", str(files / "m.onnx"), "--data", str(files / "calib.npy"),
                   "--metric", f"{tmp_path / 'mymetric.py'}:neg_mse", "--max-drop", "1e9",
                   "-o", str(tmp_path / "b"), "--quiet"])
    assert rc == 0
    g = json.loads((tmp_path / "b" / "model.json").read_text())["compile"]["gate"]
    assert g["kind"] == "metric" and g["passed"] and np.isfinite(g["metric_int8"])


def test_compile_with_a_time_budget_tunes_within_it(files, capsys):
    """--time-budget alone means: tune until it is spent (database in the build folder),
    then build with the records, then the gate."""
    import time

    out = files / "tb"
    t0 = time.time()
    rc = cli.main(["compile", str(files / "m.onnx"), "--data", str(files / "calib.npy"),
                   "--holdout", "8", "--subset-size", "100", "--time-budget", "40s",
                   "-o", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    t = meta["tuning"]
    assert t["time_budget"] == 40 and t["trials"] > 0 and t["tuned_now"] > 0
    assert t["seconds"] <= 40 + 30          # the budget, plus the candidates in flight
    assert (out / "tuning").is_dir() and meta["config"]["time_budget"] == 40
    assert meta["compile"]["gate"]["passed"] and time.time() - t0 < 300


def test_compile_needs_data(files, capsys):
    rc = cli.main(["compile", str(files / "m.onnx"), "-o", str(files / "x")])
    assert rc == 2 and "--data" in capsys.readouterr().err
