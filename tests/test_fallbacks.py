"""Fallbacks are data: a template schedule that fails is recorded in model.json, shown by
`qcompile inspect`, and makes --strict fail (qcompile/fallbacks.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qcompile.errors import QCompileError


@pytest.fixture
def int8_cnn(cnn_model, tmp_path):
    import numpy as np
    import onnx

    from qcompile.quantization.api import quantize

    # without the final Softmax (f32 by design), so --strict fails only on the fallback
    g = cnn_model.graph
    sm = next(n for n in g.node if n.op_type == "Softmax")
    g.node.remove(sm)
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == sm.input[0]:
                n.output[i] = sm.output[0]
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(cnn_model, fp32)
    shape = [d.dim_value for d in cnn_model.graph.input[0].type.tensor_type.shape.dim]
    calib = np.random.default_rng(0).standard_normal([4] + shape).astype(np.float32)
    path = tmp_path / "int8.onnx"
    onnx.save(quantize(str(fp32), calib), path)
    return path


def _break_conv_template(monkeypatch):
    from qcompile.schedules.x86 import schedule

    real = schedule._schedule_conv

    def broken(sch, main, *a, **k):
        sch.vectorize(sch.get_loops(main)[-1])  # a reduction loop: TVM refuses
        return real(sch, main, *a, **k)

    monkeypatch.setattr(schedule, "_schedule_conv", broken)


def test_no_fallbacks_in_a_normal_build(int8_cnn, tmp_path):
    from qcompile.build import BuildConfig, build

    res = build(str(int8_cnn), BuildConfig(pretuned=False), tmp_path / "b", quiet=True)
    assert res.meta["fallbacks"] == []


def test_failed_template_is_recorded_shown_and_strict_fails(int8_cnn, tmp_path, monkeypatch):
    from qcompile.build import BuildConfig, build

    _break_conv_template(monkeypatch)
    with pytest.warns(UserWarning, match="no x86 int8 schedule"):
        res = build(str(int8_cnn), BuildConfig(pretuned=False), tmp_path / "b", quiet=True)
    fb = res.meta["fallbacks"]
    assert fb and all(f["stage"] == "x86 int8 template schedule" for f in fb)
    assert all("conv" in f["kernel"] and f["reason"] for f in fb)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["fallbacks"] == fb
    out = subprocess.run([sys.executable, "-m", "qcompile", "inspect", str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    assert f"fallbacks: {len(fb)}" in out and fb[0]["kernel"] in out
    with pytest.warns(UserWarning), pytest.raises(QCompileError, match="--strict.*fell back"):
        build(str(int8_cnn), BuildConfig(pretuned=False, strict=True), tmp_path / "s",
              quiet=True)
