"""`qcompile demo`: the main job with no user files.

Generates a small CNN with onnx.helper and compiles it for the host CPU in fp32 (checked
against ONNX's reference evaluator); then quantizes it (FakeQuantize, generated calibration
data), builds the int8 module, and prints its precision summary, its agreement with fp32 and
the latency of both builds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def make_demo_model(seed: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(x, cin, cout, k, stride, name):
        w = const(name + "_w", rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k)))
        b = const(name + "_b", rng.standard_normal(cout) * 0.01)
        nodes.append(helper.make_node("Conv", [x, w, b], [name], name=name, kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        return name

    def relu(x, name):
        nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    x = relu(conv("input", 3, 16, 3, 2, "conv1"), "relu1")
    y = relu(conv(x, 16, 16, 3, 1, "conv2"), "relu2")
    y = conv(y, 16, 16, 1, 1, "conv3")
    nodes.append(helper.make_node("Add", [y, x], ["add"], name="add"))
    x = relu("add", "relu3")
    x = relu(conv(x, 16, 32, 3, 2, "conv4"), "relu4")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    w = const("fc_w", rng.standard_normal((10, 32)) * 0.2)
    b = const("fc_b", rng.standard_normal(10) * 0.01)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], name="fc", transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="prob", axis=-1))
    graph = helper.make_graph(nodes, "qcompile_demo",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calibration_inputs(n: int, seed: int) -> list[dict]:
    """Stand-in for a representative dataset: smooth random images (low-frequency noise, as
    natural images are), so activations have realistic, non-degenerate ranges."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        img = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
        out.append({"input": img + 0.1 * rng.standard_normal(img.shape).astype(np.float32)})
    return out


def run_demo(out_dir: str | None = None, niter: int = 50) -> int:
    """fp32 build checked against ONNX's reference evaluator; then the product's main job:
    post-training quantization (FakeQuantize) on generated calibration data, an int8 build,
    and its agreement with fp32 and the per-op precision summary; latency of both builds."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from . import bench
    from .build import BuildConfig, build
    from .quantization import quantize
    from .runtime import load

    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="qcompile-demo-"))
    model = make_demo_model()
    path = work / "demo.onnx"
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    print(f"demo model: {path} (conv/relu/residual add/pool/gemm/softmax, input 1x3x64x64)")

    # 1. fp32: compile for this CPU, check against the ONNX reference evaluator
    res32 = build(str(path), BuildConfig(target="host"), work / "fp32")
    target = res32.meta["target"]["name"]
    m32 = load(work / "fp32")
    evals = _calibration_inputs(32, seed=2)
    ref = ReferenceEvaluator(model)
    want = np.concatenate([ref.run(None, f)[0] for f in evals])
    got32 = np.concatenate([m32(f)["prob"] for f in evals])
    err = float(np.abs(got32 - want).max() / max(np.abs(want).max(), 1e-12))
    ok32 = err <= 1e-4
    print(f"fp32 output check vs ONNX reference: max relative error {err:.2e} "
          f"({'OK' if ok32 else 'MISMATCH'})")

    # 2. int8: quantize with 128 calibration samples, build, compare with fp32
    qmodel = quantize(str(path), _calibration_inputs(128, seed=1), preset="performance",
                      subset_size=128, target=target)
    qpath = work / "demo_int8.onnx"
    onnx.save(qmodel, qpath)
    n_fq = sum(n.op_type == "FakeQuantize" for n in qmodel.graph.node)
    print(f"quantized: {qpath} ({n_fq} FakeQuantize ops, per-channel s8 weights)")
    res8 = build(str(qpath), BuildConfig(target="host"), work / "int8")
    m8 = load(work / "int8")
    got8 = np.concatenate([m8(f)["prob"] for f in evals])
    agree = float(np.mean(got8.argmax(1) == want.argmax(1)))
    sqnr = float(10 * np.log10(np.sum(want ** 2) / max(np.sum((got8 - want) ** 2), 1e-30)))
    ok8 = agree >= 0.9
    print(f"int8 build: {res8.meta['precision_summary']}")
    print(f"int8 vs fp32 on {len(evals)} inputs: top-1 agreement {agree:.3f}, output SQNR "
          f"{sqnr:.1f} dB ({'OK' if ok8 else 'LOW'})")

    # 3. latency, interleaved so both see the same machine load
    feed = evals[0]
    t32, t8 = [], []
    for _ in range(5):
        t32.extend(m32.time_runs(feed, max(1, niter // 5)))
        t8.extend(m8.time_runs(feed, max(1, niter // 5)))
    s32, s8 = bench.latency_stats(np.array(t32)), bench.latency_stats(np.array(t8))
    print(f"target {target}: latency median fp32 {s32['median_ms']:.3f} ms, int8 "
          f"{s8['median_ms']:.3f} ms ({s32['median_ms'] / s8['median_ms']:.2f}x) over "
          f"{len(t8)} runs each (untuned: fp32 gets a generic schedule, int8 qcompile's "
          "kernel templates; `--trials N --tuning-db DIR` tunes both)")
    print(f"artifacts: {work / 'fp32'}, {work / 'int8'}")
    return 0 if ok32 and ok8 else 1
