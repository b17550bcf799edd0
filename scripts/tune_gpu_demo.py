#!/usr/bin/env python3
"""Tune an int8 OpenCL kernel on the OpenCL device present and compare with the untuned build.

    python scripts/tune_gpu_demo.py [--trials 32] [--channels 64] [--size 28] [--work DIR]

1. writes a one-layer fp32 ONNX model (3x3 conv C->C at SxS + ReLU) and quantizes it with
   `qcompile.quantization.quantize` (FakeQuantize, random calibration data);
2. `qcompile build MODEL_int8.onnx --target intel-gpu -o DIR/untuned` (default template tiles);
3. `qcompile build MODEL_int8.onnx --target intel-gpu -o DIR/tuned --trials N
   --tuning-db DIR/db` (MetaSchedule, candidates measured through pyopencl on this device);
4. runs both artifacts on the same inputs (outputs must be identical) and prints each
   kernel's device time (OpenCL profiling events, best of 5 x 10 runs) untuned vs tuned.

On this project's CI machine the device is PoCL on the CPU; on a machine with an Intel GPU
and `intel-opencl-icd`, the same commands tune for that GPU (QCOMPILE_OPENCL_DEVICE picks a
device when there are several).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_model(path: Path, c: int, s: int, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    b = (rng.standard_normal(c) * 0.01).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["output"], name="relu")]
    g = helper.make_graph(nodes, "conv_layer",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         [1, c, s, s])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                         [1, c, s, s])],
                          initializer=[numpy_helper.from_array(w, "w"),
                                       numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def sh(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def kernel_times(model, feed, rounds: int = 5, repeat: int = 10) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(rounds):
        per: dict[str, float] = {}
        for name, sec in model.profile(feed, repeat=repeat):
            per[name] = per.get(name, 0.0) + sec
        for k, v in per.items():
            best[k] = min(best.get(k, float("inf")), v)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)

    import onnx

    import qcompile
    from qcompile.gpu import opencl
    from qcompile.quantization.api import quantize

    work = Path(args.work or tempfile.mkdtemp(prefix="qcompile-tune-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    dev = opencl.describe(opencl.pick_device())
    print(f"OpenCL device: {dev['name']} ({dev['platform']}, {dev['version']}), "
          f"cl_khr_integer_dot_product: {dev['integer_dot_product']}")
    fp32 = work / "conv.onnx"
    make_model(fp32, args.channels, args.size)
    calib = np.random.default_rng(1).standard_normal(
        (4, 1, args.channels, args.size, args.size)).astype(np.float32)
    onnx.save(quantize(str(fp32), calib), work / "conv_int8.onnx")
    q = str(work / "conv_int8.onnx")
    qc = [sys.executable, "-m", "qcompile"]
    t_untuned = sh(qc + ["build", q, "--target", "intel-gpu", "-o", str(work / "untuned"),
                         "--quiet"])
    db = work / "db"
    t_tuned = sh(qc + ["build", q, "--target", "intel-gpu", "-o", str(work / "tuned"),
                       "--trials", str(args.trials), "--tuning-db", str(db), "--seed", "0"])
    a, b = qcompile.load(work / "untuned"), qcompile.load(work / "tuned")
    feed = a.random_inputs(0)
    ya, yb = a(feed)["output"], b(feed)["output"]
    same = bool(np.array_equal(ya, yb))
    ta, tb = kernel_times(a, feed), kernel_times(b, feed)
    sched = b.meta["opencl"]["schedules"]
    macs = args.channels * args.channels * 9 * args.size * args.size
    print(f"\nbuild: untuned {t_untuned:.0f}s, tuned {t_tuned:.0f}s ({args.trials} trials)")
    print(f"outputs identical: {same}")
    print(f"{'kernel (PrimFunc)':44s} {'untuned ms':>10s} {'tuned ms':>9s} {'speedup':>8s}  "
          "tuned schedule from")
    for k in sorted(ta, key=lambda k: -ta[k]):
        extra = ""
        if "qconv2d" in k:
            extra = (f"   ({macs / ta[k] / 1e9:.2f} -> {macs / tb[k] / 1e9:.2f} GMAC/s)"
                     if k in tb else "")
        print(f"{k:44s} {ta[k] * 1e3:10.3f} {tb.get(k, float('nan')) * 1e3:9.3f} "
              f"{ta[k] / tb[k] if k in tb else float('nan'):7.2f}x  {sched.get(k, '?')}{extra}")
    tot_a, tot_b = sum(ta.values()), sum(tb.values())
    print(f"{'total':44s} {tot_a * 1e3:10.3f} {tot_b * 1e3:9.3f} {tot_a / tot_b:7.2f}x")
    print(f"\nwork dir: {work}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
