"""Fast bias correction: removes the mean output shift quantization adds, for Conv (with and
without a bias), Gemm, and MatMul followed by a bias Add."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net, mlp, run_ort  # noqa: E402

from qcompile.quantization import quantize_detailed  # noqa: E402
from qcompile.quantization.runner import Runner  # noqa: E402


def _layer_mean_error(r, model_fp32, samples, tensor, axis):
    """Per-channel mean of (fp32 - quantized) of `tensor` in the simulated quantized model."""
    sim = Runner(r.model("sim"), [tensor])
    ref = Runner(r.prepared, [tensor])
    d = []
    for s in samples:
        a, b = ref.run(s, [tensor])[tensor], sim.run(s, [tensor])[tensor]
        d.append(np.moveaxis(a - b, axis, -1).reshape(-1, a.shape[axis]))
    return np.abs(np.concatenate(d).mean(axis=0)).mean()


def test_conv_and_gemm_biases_are_corrected():
    data = conv_data(16)
    kw = dict(target="avx512-vnni", activation_stat="minmax")
    off = quantize_detailed(conv_net(), data, fast_bias_correction=False, **kw)
    on = quantize_detailed(conv_net(), data, **kw)
    corrected = on.report["bias_correction"]["corrected"]
    assert {"conv1", "conv2", "conv_sc", "conv3", "fc"} <= set(corrected)
    assert not on.report["bias_correction"]["skipped"]
    # conv2 had no bias: it gets one
    conv2 = next(n for n in on.model().graph.node if n.name == "conv2")
    assert len(conv2.input) == 3 and conv2.input[2] == "conv2/bias_corrected"
    samples = [{"input": x[None]} for x in data]
    for tensor, axis in [("c2", 1), ("sc", 1), ("logits", 1)]:
        e_off = _layer_mean_error(off, conv_net(), samples, tensor, axis)
        e_on = _layer_mean_error(on, conv_net(), samples, tensor, axis)
        assert e_on < 0.7 * e_off, tensor
    # the shift is exactly mean(fp32 layer) - mean(quantized layer) on fp32 inputs
    u = on.plan.bias_updates["conv1"]
    assert u.holder == "conv1" and u.index == 2 and u.values.shape == (8,)


def test_matmul_bias_lives_in_the_following_add():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((16, 1, 16)).astype(np.float32)
    r = quantize_detailed(mlp(batch=1), data, target="avx512-vnni")
    u = r.plan.bias_updates["fc1"]
    assert u.holder == "fc1_bias" and u.tensor == "b1"
    m = r.model()
    add = next(n for n in m.graph.node if n.name == "fc1_bias")
    assert "fc1/bias_corrected" in add.input
    samples = [{"x": x} for x in data]
    off = quantize_detailed(mlp(batch=1), data, target="avx512-vnni", fast_bias_correction=False)
    assert _layer_mean_error(r, None, samples, "h1", 1) < \
        0.7 * _layer_mean_error(off, None, samples, "h1", 1)
    # model still runs and matches fp32 closely
    y = run_ort(r.model("sim"), samples[0])[0]
    ref = run_ort(mlp(batch=1), samples[0])[0]
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()


def test_layer_without_bias_slot_is_reported():
    """A MatMul not followed by a constant Add cannot be corrected: reported as skipped."""
    import onnx
    m = mlp(batch=1)
    g = m.graph
    add = next(n for n in g.node if n.name == "fc2_bias")
    g.node.remove(add)
    next(n for n in g.node if n.name == "fc2").output[0] = "y"
    onnx.checker.check_model(m)
    r = quantize_detailed(m, np.random.default_rng(0).standard_normal((4, 1, 16))
                          .astype(np.float32), target="avx512-vnni")
    assert r.report["bias_correction"]["skipped"]["fc2"] == "no constant bias to correct"


def test_bias_correction_averages_over_an_even_subset():
    """--bias-correction-subset-size N: N samples spread over the calibration set (NNCF's
    FastBiasCorrection uses 100); 0 or more than there are: all of them."""
    from qcompile.quantization import bias_correction, quantize_detailed

    items = list(range(300))
    picked = bias_correction.subset(items, 100)
    assert len(picked) == 100 and picked[0] == 0 and picked[-1] == 299
    assert len(set(picked)) == 100 and max(np.diff(picked)) <= 4
    assert bias_correction.subset(items, 0) == items == bias_correction.subset(items, 500)
    data = conv_data(12)
    r = quantize_detailed(conv_net(), data, target="avx2", bias_correction_subset_size=5)
    assert r.report["bias_correction"]["samples"] == 5
    assert quantize_detailed(conv_net(), data, target="avx2").report[
        "bias_correction"]["samples"] == 12


def _geometry_net(opset: int):
    """Every geometry the per-layer means handle: a padded strided dilated grouped Conv, an
    asymmetric-pad 1x3 Conv, a 1-D Conv, Gemm with transA / transB / alpha / beta, and a MatMul
    on a 3-D input followed by its bias Add."""
    from test_quantization_helpers import make_model

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)

    def t(*shape, s=0.3):
        return (rng.standard_normal(shape) * s).astype(np.float32)
    inits = {"wa": t(8, 2, 3, 3), "ba": t(8), "wb": t(6, 8, 1, 3), "w1d": t(4, 6, 3),
             "b1d": t(4), "wg": t(5, 24), "bg": t(5), "wm": t(5, 7), "bm": t(7)}
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], name="conv_a", group=4,
                         pads=[2, 1, 1, 2], strides=[2, 1], dilations=[2, 1]),
        helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["cb"], name="conv_b", pads=[0, 2, 0, 1],
                         strides=[1, 2]),
        helper.make_node("Reshape", ["cb", "s3"], ["cb3"], name="to1d"),
        helper.make_node("Conv", ["cb3", "w1d", "b1d"], ["c1d"], name="conv_1d", pads=[1, 1]),
        helper.make_node("Flatten", ["c1d"], ["f"], name="flat", axis=0),
        helper.make_node("Reshape", ["f", "s2"], ["f2"], name="to2d"),
        helper.make_node("Gemm", ["f2", "wg", "bg"], ["gm"], name="gemm", transA=1, transB=1,
                         alpha=0.7, beta=1.5),
        helper.make_node("Reshape", ["gm", "s3b"], ["gm3"], name="to3d"),
        helper.make_node("MatMul", ["gm3", "wm"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bm"], ["y"], name="matmul_bias"),
    ]
    inits.update(s3=np.array([1, 6, -1], np.int64), s2=np.array([24, -1], np.int64),
                 s3b=np.array([1, -1, 5], np.int64))
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 11, 9])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 7])],
                   [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=opset)
    return onnx.shape_inference.infer_shapes(m)


def test_layer_means_give_the_shift_of_the_quantized_copy(monkeypatch):
    """The shift from the per-layer input means (the default) equals the one measured by running
    a quantized copy of every layer, for every geometry and both ReduceMean forms (opset 17 / 18)."""
    from qcompile.quantization import bias_correction

    rng = np.random.default_rng(0)
    data = (rng.standard_normal((6, 1, 8, 11, 9)) + 0.3).astype(np.float32)
    for opset in (17, 18):
        model = _geometry_net(opset)
        kw = dict(target="avx2", activation_stat="minmax")
        fast = quantize_detailed(model, data, **kw)
        with monkeypatch.context() as mp:
            mp.setattr(bias_correction, "MEAN_RULES", {})
            copy = quantize_detailed(model, data, **kw)
        names = {"conv_a", "conv_b", "conv_1d", "gemm", "matmul"}
        assert names <= set(fast.plan.bias_updates), fast.report["bias_correction"]
        for name in names:
            a = fast.plan.bias_updates[name].shift
            b = copy.plan.bias_updates[name].shift
            assert np.abs(b).max() > 1e-4, name            # something to correct
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * np.abs(b).max(),
                                       err_msg=f"{name} (opset {opset})")
