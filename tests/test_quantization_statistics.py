"""Range estimators (minmax, mean_minmax, percentile, mse, kl) and statistics collection."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net  # noqa: E402

from qcompile.errors import QuantizationError  # noqa: E402
from qcompile.quantization import quantize_detailed  # noqa: E402
from qcompile.quantization.fake_quantize import activation_range, fake_quantize  # noqa: E402
from qcompile.quantization.range_estimators import estimate  # noqa: E402
from qcompile.quantization.statistics import TensorStats  # noqa: E402


def _stats(batches, bins=2048):
    s = TensorStats()
    for b in batches:
        s.update(b, bins)
    return s


def _true_mse(x, lo, hi, shape, levels=256):
    il, ih = activation_range(lo, hi, "symmetric" if shape != "asymmetric" else "asymmetric",
                              levels, shape == "unsigned")
    return float(np.mean((x - fake_quantize(x, il, ih, il, ih, levels)) ** 2))


def test_minmax_and_mean_minmax():
    batches = [np.array([-1.0, 2.0], np.float32), np.array([-3.0, 1.0], np.float32),
               np.array([0.5, 4.0], np.float32)]
    s = _stats(batches)
    assert estimate(s, "minmax", "asymmetric", 256) == (-3.0, 4.0)
    lo, hi = estimate(s, "mean_minmax", "asymmetric", 256)
    assert lo == pytest.approx((-1 - 3 + 0.5) / 3) and hi == pytest.approx((2 + 1 + 4) / 3)


def test_percentile():
    x = np.linspace(-1, 1, 200001, dtype=np.float32)
    s = _stats([x])
    lo, hi = estimate(s, "percentile", "asymmetric", 256, percentile=99.0)
    assert lo == pytest.approx(-0.98, abs=2e-3) and hi == pytest.approx(0.98, abs=2e-3)
    lo, hi = estimate(s, "percentile", "symmetric", 256, percentile=90.0)
    assert hi == pytest.approx(0.9, abs=2e-3) and lo == -hi
    relu = np.maximum(x, 0)                     # half of the values are exact zeros
    lo, hi = estimate(_stats([relu]), "percentile", "unsigned", 256, percentile=99.0)
    assert lo == 0.0 and hi == pytest.approx(0.98, abs=3e-3)
    with pytest.raises(QuantizationError, match="--percentile"):
        estimate(s, "percentile", "symmetric", 256, percentile=30.0)


@pytest.mark.parametrize("levels", [16, 256])
@pytest.mark.parametrize("shape", ["symmetric", "unsigned", "asymmetric"])
def test_mse_range_is_near_the_optimum(shape, levels):
    rng = np.random.default_rng(0)
    x = rng.laplace(size=200000).astype(np.float32)
    if shape == "unsigned":
        x = np.abs(x)
    elif shape == "asymmetric":
        x = np.where(x < 0, 0.3 * x, x) + 0.5
    s = _stats([x[:100000], x[100000:]])
    lo, hi = estimate(s, "mse", shape, levels)
    err = _true_mse(x, lo, hi, shape, levels)
    mm = _true_mse(x, *estimate(s, "minmax", shape, levels), shape, levels)
    if levels == 16:                                     # few levels: clipping pays off
        assert hi < 0.7 * x.max() and err < 0.7 * mm
    else:                                                # 8 bits: never worse than min-max
        assert err <= 1.02 * mm
    if shape != "asymmetric":                            # brute force over the threshold
        grid = np.linspace(0.02, 1.0, 300) * x.max()
        best = min(_true_mse(x, -t if shape == "symmetric" else 0.0, t, shape, levels)
                   for t in grid)
        assert err <= 1.1 * best


def test_kl_threshold():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=200000).astype(np.float32)
    s = _stats([x])
    lo, hi = estimate(s, "kl", "symmetric", 256)
    assert lo == -hi and 0.1 * np.abs(x).max() < hi <= np.abs(x).max() + 1e-6
    lo, hi = estimate(_stats([np.abs(x)]), "kl", "unsigned", 256)
    assert lo == 0 and 0 < hi <= np.abs(x).max() + 1e-6


def test_histogram_memory_is_bounded_and_grows_its_range_in_one_pass():
    s = TensorStats()
    rng = np.random.default_rng(0)
    small = rng.uniform(-1, 1, 10 ** 5).astype(np.float32)
    big = (rng.standard_normal(10 ** 6) * 10).astype(np.float32)
    big[:1000] = 0.0
    for x in (small, big, small):
        s.update(x, 512)
    assert s.hist.shape == (512,) and s.hist.sum() == big.size + 2 * small.size
    assert s.hist_lo <= big.min() and s.hist_hi >= big.max() and s.zeros == 1000
    # the histogram is what one would get with the final range directly (up to bin merging)
    edges = s.bin_edges()
    ref, _ = np.histogram(np.concatenate([small, big, small]), bins=edges)
    assert np.abs(ref - s.hist).sum() <= 0.005 * s.hist.sum()   # float32 binning at edges


def test_unknown_estimator():
    with pytest.raises(QuantizationError, match="unknown range estimator"):
        estimate(_stats([np.ones(3, np.float32)]), "nope", "symmetric", 256)


@pytest.mark.parametrize("stat", ["minmax", "mean_minmax", "percentile", "mse", "kl"])
def test_every_estimator_end_to_end(stat):
    """Calibration collects the right statistics from intermediate tensors: minmax ranges
    equal the numpy min/max of the tensors the fp32 model computes."""
    m = conv_net()
    data = conv_data(6)
    r = quantize_detailed(m, data, activation_stat=stat, target="avx512-vnni",
                          fast_bias_correction=False)
    q = r.plan.quantizers["r1"]                       # relu1 output, feeds conv2
    assert q.unsigned and float(q.input_low) == 0.0 and q.estimator == stat
    if stat == "minmax":
        import onnxruntime as ort
        from qcompile.quantization.runner import with_outputs
        s = ort.InferenceSession(with_outputs(r.prepared, ["r1", "sc"]).SerializeToString())
        r1 = np.stack([s.run(["r1"], {"input": d[None]})[0] for d in data])
        assert float(q.input_high) == pytest.approx(float(r1.max()), rel=1e-6)
        sc = np.stack([s.run(["sc"], {"input": d[None]})[0] for d in data])
        qs = r.plan.quantizers["sc"]                   # signed: [-m*128/127, m]
        m_ = max(-sc.min(), sc.max())
        assert float(qs.input_high) == pytest.approx(m_, rel=1e-6)
        assert float(qs.input_low) == pytest.approx(-m_ * 128 / 127, rel=1e-6)
    assert r.report["calibration"]["activation_stat"] == stat


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_calibration_data_is_refused(bad):
    data = conv_data(4)
    data[2, 1, 3, 3] = bad
    with pytest.raises(QuantizationError, match=r"sample 2 input 'input'.*non-finite|"
                                                r"non-finite.*sample 2 input 'input'"):
        quantize_detailed(conv_net(), data, target="avx2")


def test_non_finite_activations_are_counted_and_reported():
    s = TensorStats()
    s.update(np.array([1.0, -np.inf, 2.0, np.nan], np.float32), 64)
    assert (s.min, s.max, s.non_finite, s.elements) == (1.0, 2.0, 2, 2)
    assert s.summary()["non_finite"] == 2
    r = quantize_detailed(conv_net(), conv_data(4), target="avx2")
    assert r.report["calibration"]["non_finite_activations"] == {}


def test_empty_ranges_are_reported():
    """A constant-zero activation and an all-zero weight channel quantize exactly (0 is a
    level) but are listed by tensor in the report, not widened silently."""
    from onnx import numpy_helper

    from qcompile.quantization.report import summary

    m = conv_net()
    inits = {t.name: t for t in m.graph.initializer}
    w1 = numpy_helper.to_array(inits["w1"])
    inits["w1"].CopyFrom(numpy_helper.from_array(np.zeros_like(w1), "w1"))
    inits["b1"].CopyFrom(numpy_helper.from_array(np.full(w1.shape[0], -1.0, np.float32), "b1"))
    w2 = numpy_helper.to_array(inits["w2"]).copy()
    w2[3] = 0
    inits["w2"].CopyFrom(numpy_helper.from_array(w2, "w2"))
    logged = []
    r = quantize_detailed(m, conv_data(4), target="avx2",
                          log=logged.append)
    zero = r.report["calibration"]["zero_ranges"]
    assert "is empty; widened to 1e-06" in zero["r1"]          # relu1 of -1: always 0
    assert zero["w2"].startswith("1 all-zero weight channel(s) along axis 0: 3")
    assert "w1" in zero and "all-zero weight channel(s)" in zero["w1"]
    assert any("'r1'" in line and "is empty" in line for line in logged)
    assert "empty range: w2" in summary(r.report)
    clean = quantize_detailed(conv_net(), conv_data(4), target="avx2")
    assert clean.report["calibration"]["zero_ranges"] == {}


def test_sampled_histogram_keeps_extremes_and_the_mse_range():
    """--histogram-sample: the histogram of a strided sample of each batch gives (almost) the
    MSE range of the full one; min / max and the histogram's span still see every value (a
    single extreme value that the sample misses), and no position is systematically skipped
    (a channel that holds every large value is seen)."""
    from qcompile.quantization.statistics import stride

    assert [stride(n) for n in (0, 1, 2, 12, 13, 14)] == [2, 2, 2, 13, 13, 17]
    rng = np.random.default_rng(0)
    full, part = TensorStats(), TensorStats()
    for i in range(40):
        x = np.abs(rng.standard_normal((1, 16, 56, 56))).astype(np.float32)
        x[0, 5] *= 3.0                                  # one hot channel
        if i == 17:
            x[0, 3, 10, 10] = 50.0                      # one outlier in one batch
        full.update(x, 2048)
        part.update(x, 2048, sample=4096)
    assert part.max == full.max == 50.0 and part.min == full.min
    assert part.hist_hi == full.hist_hi and part.hist.sum() < full.hist.sum() / 8
    lo_f, hi_f = estimate(full, "mse", "unsigned", 256)
    lo_p, hi_p = estimate(part, "mse", "unsigned", 256)
    assert lo_p == lo_f == 0.0 and abs(hi_p - hi_f) <= 0.03 * hi_f, (hi_p, hi_f)
    # the sampled share of the hot channel's values matches its share of all values
    edges = full.bin_edges()
    big = edges[:-1] > 6.0
    share_f = full.hist[big].sum() / full.hist.sum()
    share_p = part.hist[big].sum() / part.hist.sum()
    assert share_f > 0 and abs(share_p - share_f) < 0.2 * share_f


def test_histogram_sample_is_a_quantize_option():
    data = conv_data(8)
    a = quantize_detailed(conv_net(), data, target="avx2", histogram_sample=64)
    b = quantize_detailed(conv_net(), data, target="avx2", histogram_sample=0)
    assert a.report["config"]["histogram_sample"] == 64
    assert b.report["config"]["histogram_sample"] == 0


@pytest.mark.parametrize("stat,sample", [("mse", 64), ("mse", 0), ("minmax", 64)])
def test_statistics_reduced_in_the_session_equal_the_numpy_ones(stat, sample):
    """stats_graph (min / max / sum / strided sample computed by ONNX Runtime) gives the same
    TensorStats as exposing every tensor and reducing it in numpy."""
    from qcompile.quantization import calibration
    from qcompile.quantization.graph import Graph, prepare
    from qcompile.quantization.placement import build_plan
    from qcompile.quantization.rules import rules_for_target

    model, _ = prepare(conv_net())
    g = Graph(model)
    _, rules = rules_for_target("avx2")
    plan = build_plan(g, rules, rules.preset("performance"), {})
    samples = [{"input": x[None]} for x in conv_data(6)]
    got = {}
    for in_graph in (True, False):
        s = calibration.CalibrationSettings(activation_estimator=stat, histogram_sample=sample,
                                            reduce_in_graph=in_graph)
        got[in_graph] = calibration.collect(model, g, plan, samples, s)
    assert got[True].keys() == got[False].keys() and len(got[True]) >= 4
    for t, a in got[True].items():
        b = got[False][t]
        assert (a.batches, a.elements, a.zeros) == (b.batches, b.elements, b.zeros), t
        assert np.float32(a.min) == np.float32(b.min) and np.float32(a.max) == np.float32(b.max)
        if stat == "mse":
            assert a.hist_lo == b.hist_lo and a.hist_hi == b.hist_hi
            np.testing.assert_array_equal(a.hist, b.hist, err_msg=t)
        else:
            assert a.hist is None and b.hist is None
