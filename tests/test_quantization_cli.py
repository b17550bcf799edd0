"""`qcompile quantize` and `qcompile debug` through their add_arguments()/run() modules."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net  # noqa: E402

from qcompile.quantization import cli_debug, cli_quantize, read_report  # noqa: E402


def _parse(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


@pytest.fixture()
def files(tmp_path):
    onnx.save(conv_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", conv_data(8))
    return tmp_path


def test_quantize_cli_fq_and_report(files, capsys):
    args = _parse(cli_quantize, [files / "m.onnx", "--data", files / "calib.npy",
                                 "--subset-size", 6, "--preset", "mixed", "--target",
                                 "avx512-vnni", "--activation-stat", "percentile",
                                 "--percentile", "99.9", "--no-fast-bias-correction",
                                 "--report", files / "r.json"])
    assert cli_quantize.run(args) == 0
    out = capsys.readouterr().out
    assert "quantized" in out and "not quantized" in out and "m_int8.onnx" in out
    q = onnx.load(files / "m_int8.onnx")                         # default output name
    assert any(n.op_type == "FakeQuantize" and n.domain == "org.openvinotoolkit"
               for n in q.graph.node)
    rep = json.loads((files / "r.json").read_text())
    assert rep == json.loads(json.dumps(read_report(q), default=str))
    assert rep["config"]["preset"] == "mixed" and rep["config"]["percentile"] == 99.9
    assert rep["calibration"]["samples"] == 6 and not rep["bias_correction"]["enabled"]


def test_quantize_cli_qdq(files):
    args = _parse(cli_quantize, [files / "m.onnx", "--data", files / "calib.npy", "--format",
                                 "qdq", "-o", files / "q.onnx", "--target", "avx512-vnni",
                                 "--weight-stat", "mse", "--overflow-fix", "first-layer"])
    assert cli_quantize.run(args) == 0
    q = onnx.load(files / "q.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    rep = read_report(q)
    w1 = next(x for x in rep["quantizers"] if x["tensor"] == "w1")
    assert w1["estimator"] == "mse+half-range"                  # conv1 is the first layer
    assert next(x for x in rep["quantizers"] if x["tensor"] == "w2")["estimator"] == "mse"


def test_quantize_cli_needs_data(files):
    from qcompile.errors import QuantizationError
    with pytest.raises(QuantizationError, match="--data"):
        cli_quantize.run(_parse(cli_quantize, [files / "m.onnx"]))


def test_debug_cli_table_png_html_json(files, capsys):
    cli_quantize.run(_parse(cli_quantize, [files / "m.onnx", "--data", files / "calib.npy",
                                           "-o", files / "q.onnx", "--target", "avx512-vnni"]))
    capsys.readouterr()
    args = _parse(cli_debug, [files / "m.onnx", files / "q.onnx", "--data", files / "calib.npy",
                              "--subset-size", 4, "--plot", files / "p.png", "--json",
                              files / "d.json"])
    assert cli_debug.run(args) == 0
    out = capsys.readouterr().out
    assert "SQNR dB" in out and "conv1" in out and "noisiest quantizers" in out
    d = json.loads((files / "d.json").read_text())
    layers = {x["node"]: x for x in d["layers"]}
    assert d["samples"] == 4 and layers["conv1"]["quantized_inputs"]
    assert 10 < layers["conv1"]["sqnr_db"] < 80 and 0.99 < layers["conv1"]["cosine"] <= 1
    assert (files / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args.plot = str(files / "p.html")
    cli_debug.run(args)
    html = (files / "p.html").read_text()
    assert "<svg" in html and "conv2" in html


def test_debug_on_qdq_model(files):
    cli_quantize.run(_parse(cli_quantize, [files / "m.onnx", "--data", files / "calib.npy",
                                           "-o", files / "q.onnx", "--format", "qdq",
                                           "--target", "avx512-vnni"]))
    from qcompile.quantization.debug import compare
    res = compare(files / "m.onnx", files / "q.onnx", files / "calib.npy", subset_size=2)
    assert any(r.node == "fc" and r.quantized_inputs for r in res.rows)
    assert res.quantizers and all(q.sqnr_db > 20 for q in res.quantizers)


def test_progress_bar_when_forced():
    import io
    from qcompile.quantization.progress import Progress
    buf = io.StringIO()
    with Progress(3, "statistics", enabled=True, stream=buf) as bar:
        for _ in range(3):
            bar.update()
    text = buf.getvalue()
    assert text.startswith("statistics:") and "3/3" in text and text.endswith("\n")
    silent = io.StringIO()
    with Progress(3, "x", enabled=None, stream=silent) as bar:   # not a tty: no output
        bar.update(3)
    assert silent.getvalue() == ""


def test_python_api_rejects_unknown_options():
    from qcompile.errors import QuantizationError
    from qcompile.quantization import quantize
    with pytest.raises(QuantizationError, match="did you mean 'activation_stat'"):
        quantize(conv_net(), conv_data(2), activation_stats="mse")


def test_quantize_cli_input_shape_fixes_symbolic_dims(files):
    """A model with a symbolic batch: --input-shape fixes it in the quantized model (the
    flag `qcompile build` has too); a rank mismatch is an error naming the input."""
    m = onnx.load(files / "m.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(m, files / "dyn.onnx")
    args = _parse(cli_quantize, [files / "dyn.onnx", "--data", files / "calib.npy",
                                 "--subset-size", 4, "--input-shape", "input=1,3,16,16",
                                 "-o", files / "q.onnx"])
    assert cli_quantize.run(args) == 0
    q = onnx.load(files / "q.onnx")
    assert [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]
    bad = _parse(cli_quantize, [files / "dyn.onnx", "--data", files / "calib.npy",
                                "--input-shape", "input=1,3,16"])
    from qcompile.errors import InputError
    with pytest.raises(InputError, match="input 'input'|input input"):
        cli_quantize.run(bad)


def test_report_ranges_of_one_element_arrays():
    """Per-tensor ranges stored as [1,1,1,1] arrays (NumPy >= 2.4 refuses float() of them)."""
    from qcompile.quantization.report import _rng
    assert _rng(np.full((1, 1, 1, 1), 2.5, np.float32)) == 2.5
    assert _rng(np.array([1.0, -3.0, 2.0])) == [-3.0, 2.0]
