"""`qcompile demo`: the main job with no user files.

Generates a small CNN with onnx.helper, compiles it for the host CPU, runs the compiled
module against ONNX's reference evaluator, and prints the output check and the latency.
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


def run_demo(out_dir: str | None = None, niter: int = 50) -> int:
    import onnx
    from onnx.reference import ReferenceEvaluator

    from . import bench
    from .build import BuildConfig, build
    from .runtime import load

    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="qcompile-demo-"))
    model = make_demo_model()
    path = work / "demo.onnx"
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    print(f"demo model: {path} (conv/relu/residual add/pool/gemm/softmax, input 1x3x64x64)")
    res = build(str(path), BuildConfig(target="host"), work / "build")
    m = load(work / "build")
    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    got = m(feed)["prob"]
    want = ReferenceEvaluator(model).run(None, feed)[0]
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    ok = err <= 1e-4
    print(f"output check vs ONNX reference: max relative error {err:.2e} "
          f"({'OK' if ok else 'MISMATCH'}), top-1 {int(got.argmax())} vs {int(want.argmax())}")
    stats = bench.latency_stats(m.time_runs(feed, niter))
    print(f"target {res.meta['target']['name']}: latency median {stats['median_ms']:.3f} ms, "
          f"p90 {stats['p90_ms']:.3f} ms over {niter} runs")
    print(f"artifact: {work / 'build'}")
    return 0 if ok else 1
