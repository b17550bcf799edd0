"""The real PP-OCR text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx from the PyPI
wheel rapidocr-onnxruntime==1.4.4): quantized on rendered text lines, it keeps its accuracy on
other rendered lines in both orientations, and OpenVINO reads the FakeQuantize model.

Needs PyPI once (the .onnx is cached in $QCOMPILE_CACHE or ~/.cache/qcompile); without network
the test fails with the download command and error, it does not skip."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import REPO, openvino_session, ort_session  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import ptq_data  # noqa: E402

from qcompile.quantization import quantize_detailed  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cls_model():
    return ptq_data.fetch_ppocr_cls()          # raises with a clear message when offline


@pytest.mark.parametrize("preset", ["performance", "mixed"])
def test_ppocr_classifier_accuracy_on_rendered_text(cls_model, preset):
    import onnx
    calib, _ = ptq_data.text_lines(48, seed=11)
    xs, labels = ptq_data.text_lines(80, seed=12)
    r = quantize_detailed(str(cls_model), [{"x": x} for x in calib], preset=preset,
                          target="avx512-vnni")
    rep = r.report
    assert rep["prepare"]["constants_to_initializers"] > 0
    assert len(rep["prepare"]["batchnorms_folded"]) == 35
    assert rep["quantized_ops"]["by_type"]["Conv"] == 53
    fp32 = onnx.load(str(cls_model))
    sim, fq = r.model("sim"), r.model("fq")
    f32, fsim = ort_session(fp32, optimize=True), ort_session(sim, optimize=True)
    p32 = np.array([np.argmax(f32({"x": x})[0]) for x in xs])
    pq = np.array([np.argmax(fsim({"x": x})[0]) for x in xs])
    acc32, accq = float(np.mean(p32 == labels)), float(np.mean(pq == labels))
    assert acc32 >= 0.85                        # the rendered lines are realistic input
    assert accq >= acc32 - 0.05 and np.mean(pq == p32) >= 0.9
    # OpenVINO executes the FakeQuantize model like the emulation
    fov = openvino_session(fq)
    pov = np.array([np.argmax(fov({"x": x})[0]) for x in xs])
    assert np.mean(pov == pq) >= 0.95
