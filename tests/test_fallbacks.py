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
    assert all("conv" in f["kernel"] and f["reason"] and f["nodes"] for f in fb)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["fallbacks"] == fb
    out = subprocess.run([sys.executable, "-m", "qcompile", "inspect", str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    assert f"fallbacks: {len(fb)}" in out and fb[0]["kernel"] in out
    assert f"[nodes {', '.join(fb[0]['nodes'])}]" in out
    with pytest.warns(UserWarning), pytest.raises(QCompileError, match="--strict.*fell back"):
        build(str(int8_cnn), BuildConfig(pretuned=False, strict=True), tmp_path / "s",
              quiet=True)


def test_int8_op_without_a_template_is_a_fallback(tmp_path):
    """A grouped (not depthwise) int8 conv has no x86 template: the generic kernel runs it,
    and model.json says so with the ONNX node and the dispatcher's reason."""
    import onnx

    from lpt_helpers import fq_cnn
    from qcompile.build import BuildConfig, build

    onnx.save(fq_cnn(), tmp_path / "m.onnx")
    res = build(str(tmp_path / "m.onnx"), BuildConfig(pretuned=False), tmp_path / "b",
                quiet=True)
    [fb] = res.meta["fallbacks"]
    assert fb["nodes"] == ["gconv"] and fb["stage"].startswith("x86 int8 dispatch")
    assert "grouped conv2d (groups=4)" in fb["reason"] and fb["kernel"].startswith("fused_")
    assert fb["kernel"] in {k["function"] for k in res.meta["kernels"]}


def _break_opencl_conv_template(monkeypatch):
    """The OpenCL conv2d template's tiling refused by TVM (both routes of schedule_fused)."""
    from qcompile.gpu.schedules import schedule

    real = schedule._tile_main

    def broken(sch, main, kind, *a, **k):
        if kind == "conv2d":
            sch.vectorize(sch.get_loops(main)[-1])  # the DOT4 lane, a reduction: TVM refuses
        return real(sch, main, kind, *a, **k)

    monkeypatch.setattr(schedule, "_tile_main", broken)


def test_failed_opencl_template_is_recorded_and_strict_fails(int8_cnn, tmp_path, monkeypatch):
    """An OpenCL int8 template that TVM refuses: dlight runs the kernel (still exact), and
    model.json `fallbacks` says which kernel, why and what runs instead; --strict fails."""
    import numpy as np

    from conftest import assert_opencl_int8_kernels_complete, require_opencl
    from qcompile.build import BuildConfig, build
    from qcompile.runtime import load

    good = build(str(int8_cnn), BuildConfig(target="intel-gpu", strict=True), tmp_path / "g",
                 quiet=True)  # --strict passes without the break: nothing fell back
    assert good.meta["fallbacks"] == []
    _break_opencl_conv_template(monkeypatch)
    res = build(str(int8_cnn), BuildConfig(target="intel-gpu"), tmp_path / "b", quiet=True)
    fb = res.meta["fallbacks"]
    convs = {k["function"] for k in res.meta["kernels"]
             if any(n.startswith("conv") for n in k["nodes"]) and "qconv2d" in k["function"]}
    assert len(convs) == 4 and {f["kernel"] for f in fb} == convs, fb
    for f in fb:
        assert f["stage"] == "opencl int8 template schedule" and "dlight" in f["instead"]
        assert "ScheduleError" in f["reason"] and f["nodes"], f
        assert res.meta["opencl"]["schedules"][f["kernel"]] == "dlight"
    templated = assert_opencl_int8_kernels_complete(res.meta)
    assert len(templated) == 1 and "qdense" in templated.pop()   # the Gemm keeps its template
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["fallbacks"] == fb
    out = subprocess.run([sys.executable, "-m", "qcompile", "inspect", str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    assert f"fallbacks: {len(fb)}" in out and fb[0]["kernel"] in out
    with pytest.raises(QCompileError, match="--strict.*fell back.*opencl int8 template"):
        build(str(int8_cnn), BuildConfig(target="intel-gpu", strict=True), tmp_path / "s",
              quiet=True)
    assert not (tmp_path / "s" / "model.json").exists()
    # what runs instead computes the same integers as the templates
    require_opencl()
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    a, b = load(tmp_path / "b")({"input": x}), load(tmp_path / "g")({"input": x})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
