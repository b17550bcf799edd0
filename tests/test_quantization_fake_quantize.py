"""FakeQuantize numerics (docs/architecture.md, numerics contract): the numpy reference against OpenVINO, the range
conventions, and their QuantizeLinear/DequantizeLinear equivalents in ONNX Runtime."""
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import make_model, run_openvino, run_ort  # noqa: E402

from qcompile.errors import QuantizationError  # noqa: E402
from qcompile.quantization.fake_quantize import (  # noqa: E402
    activation_range, fake_quantize, qdq_params, quantize_weight, weight_range)

import openvino as ov  # noqa: E402  (the test extra: missing, the tests fail, not skip)


def _ov_reference(x, il, ih, ol, oh, levels):
    """OpenVINO's reference implementation (Op.evaluate, what its constant folding uses)."""
    import openvino.opset13 as ops
    args = [np.asarray(v, np.float32) for v in (x, il, ih, ol, oh)]
    fq = ops.fake_quantize(*[ops.parameter(a.shape, np.float32) for a in args], levels)
    out = ov.Tensor(np.zeros(np.broadcast_shapes(*[a.shape for a in args]), np.float32))
    assert fq.evaluate([out], [ov.Tensor(a) for a in args])
    return out.data.copy()


def _ov_cpu(x, il, ih, ol, oh, levels):
    """OpenVINO's CPU plugin executing an ONNX FakeQuantize node."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n)
             for n, v in zip(["il", "ih", "ol", "oh"], [il, ih, ol, oh])]
    node = helper.make_node("FakeQuantize", ["x", "il", "ih", "ol", "oh"], ["y"],
                            domain="org.openvinotoolkit", levels=levels)
    m = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))], inits,
                   extra_opsets=[helper.make_opsetid("org.openvinotoolkit", 1)])
    return run_openvino(m, {"x": x})[0]


TIES = np.arange(-2, 258, 0.5, dtype=np.float32).reshape(1, -1)   # every k + 0.5 is a tie


@pytest.mark.parametrize("case", ["ties", "bounds", "inverted", "per-channel-255",
                                  "per-channel-256", "levels-16", "narrow"])
def test_reference_matches_openvino(case):
    rng = np.random.default_rng(0)
    if case == "ties":
        args = (TIES, 0.0, 255.0, 0.0, 255.0, 256)
    elif case == "bounds":                       # x exactly at il / ih and just outside
        x = np.array([[-1.0, np.nextafter(-1, -2), np.nextafter(-1, 0), 1.0,
                       np.nextafter(1, 2), 0.0]], np.float32)
        args = (x, -1.0, 1.0, -1.0, 1.0, 256)
    elif case == "inverted":                     # il > ih (and ol > oh)
        args = (TIES, 255.0, 0.0, 255.0, 0.0, 256)
    elif case.startswith("per-channel"):
        x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32) * 3
        il = np.array([-1, -2, -0.5], np.float32).reshape(1, 3, 1, 1)
        ih = np.array([1, 2.5, 4], np.float32).reshape(1, 3, 1, 1)
        args = (x, il, ih, il, ih, int(case[-3:]))
    elif case == "levels-16":
        args = (rng.standard_normal((4, 64)).astype(np.float32), -1.5, 2.0, -1.5, 2.0, 16)
    else:                                        # output range differs from input range
        args = (rng.standard_normal((4, 64)).astype(np.float32), -1.0, 1.0, -127.0, 127.0, 255)
    ours = fake_quantize(*args)
    ref = _ov_reference(*args)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))
    if case != "inverted":
        # the CPU plugin agrees too (up to float rounding of its precomputed scales); it
        # returns output_low everywhere when il > ih, which qcompile never writes
        cpu = _ov_cpu(*args)
        np.testing.assert_allclose(ours, cpu, rtol=0, atol=2e-6 * max(1.0, np.abs(ref).max()))


def test_ties_round_half_to_even():
    y = fake_quantize(np.array([0.5, 1.5, 2.5, 127.5, 254.5], np.float32), 0, 255, 0, 255, 256)
    np.testing.assert_array_equal(y, [0, 2, 2, 128, 254])


@pytest.mark.parametrize("il,ih", [(1.0, 1.0), (np.nan, 1.0), (0.0, np.nan)])
def test_invalid_range_is_an_error(il, ih):
    with pytest.raises(QuantizationError, match="input_low == input_high|NaN"):
        fake_quantize(np.zeros(3, np.float32), il, ih, il, ih, 256)


def test_activation_ranges():
    # unsigned (after ReLU): [0, max], u8 with zero point 0
    assert activation_range(0.0, 6.0, "symmetric", 256, True) == (0.0, 6.0)
    # signed symmetric: [-m * 128/127, m] -> s8 scale m/127
    il, ih = activation_range(-2.0, 3.0, "symmetric", 256, False)
    assert ih == 3.0 and il == pytest.approx(-3.0 * 128 / 127)
    p = qdq_params(il, ih, 256, "t")
    assert p.dtype == "int8" and p.zero_point == 0 and p.scale == pytest.approx(3.0 / 127)
    # asymmetric: zero is exactly a level (integer zero point), range covers [lo, hi]
    il, ih = activation_range(-1.3, 4.1, "asymmetric", 256, False)
    s = (ih - il) / 255
    assert -il / s == pytest.approx(round(-il / s), abs=1e-6)
    assert il <= -1.3 + s and ih >= 4.1 - s
    assert fake_quantize(np.float32(0.0), il, ih, il, ih, 256) == 0.0
    p = qdq_params(il, ih, 256, "t")
    assert p.dtype == "uint8" and 0 < int(p.zero_point) < 255


def test_weight_range_is_symmetric_s8_without_minus_128():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    absmax = np.abs(w).reshape(4, -1).max(1)
    il, ih = weight_range(absmax)
    wq = quantize_weight(w, il, ih, 0, 255)
    s = (absmax / 127).reshape(4, 1, 1, 1)
    q = np.round(wq / s)
    assert q.min() >= -127 and q.max() <= 127
    np.testing.assert_allclose(wq, q * s, atol=1e-6)
    p = qdq_params(il, ih, 255, "w")
    assert p.dtype == "int8" and not p.zero_point.any()


def test_qdq_in_onnxruntime_equals_fake_quantize():
    """QuantizeLinear -> DequantizeLinear with qdq_params() computes FQ(x) (all three kinds)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 4096)) * 2).astype(np.float32)
    for il, ih in [activation_range(0, 3.0, "symmetric", 256, True),
                   activation_range(-2.5, 3.0, "symmetric", 256, False),
                   activation_range(-1.1, 3.7, "asymmetric", 256, False)]:
        p = qdq_params(il, ih, 256, "x")
        inits = [numpy_helper.from_array(p.scale, "s"), numpy_helper.from_array(p.zero_point, "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], inits)
        y = run_ort(m, {"x": x})[0]
        ref = fake_quantize(x, il, ih, il, ih, 256)
        step = (ih - il) / 255
        # identical except where float rounding puts x on the other side of a tie
        assert np.mean(np.abs(y - ref) > 1e-5) < 1e-3
        assert np.abs(y - ref).max() <= step * 1.001


def test_levels_without_qdq_equivalent_is_an_error():
    with pytest.raises(QuantizationError, match="--format fq"):
        qdq_params(-1.0, 1.0, 16, "tensor 'x'")
