#!/usr/bin/env python3
"""Whole int8 models on the OpenCL runner vs the x86 int8 build vs fp32 (ONNX Runtime).

    python scripts/gpu_whole_model.py MODEL.onnx [MODEL2.onnx ...] [--work DIR]
                                      [--inputs 3] [--calib 4] [--niter 3]

For each fp32 ONNX model (e.g. ../shared/bench/make_models.py's resnet50.onnx and
mobilenetv2.onnx): a trailing Softmax is cut (so the output is the dequantized logits, an
exact function of integer accumulators), the model is quantized with
`qcompile.quantization.quantize` (FakeQuantize, seeded normal calibration data), built with
`qcompile build --target host` (x86 int8) and `--target intel-gpu` (OpenCL artifact), and
both are run on the same seeded inputs. Printed per model: build times, the OpenCL
artifact's kernel / launch counts, whether the two int8 outputs are bit-identical, each
build's agreement with fp32 (max abs error, SQNR dB, top-1 match), first-run and
steady-state latency of both.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def strip_softmax(model):
    g = model.graph
    out = g.output[0].name
    prod = [n for n in g.node if out in n.output]
    if prod and prod[0].op_type == "Softmax":
        node = prod[0]
        g.node.remove(node)
        g.output[0].name = node.input[0]   # same shape: softmax keeps it
    return model


def sqnr(ref, x):
    ref = ref.astype(np.float64)
    err = ref - x.astype(np.float64)
    return 10 * np.log10((ref ** 2).sum() / max((err ** 2).sum(), 1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--work", default=None)
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--niter", type=int, default=3)
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    import qcompile
    from qcompile.quantization.api import quantize

    work = Path(args.work or tempfile.mkdtemp(prefix="qcompile-gpu-models-"))
    work.mkdir(parents=True, exist_ok=True)
    ok = True
    for path in args.models:
        name = Path(path).stem
        m = strip_softmax(onnx.load(path))
        fp32 = work / f"{name}_logits.onnx"
        onnx.save(m, fp32)
        inp = m.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        calib = np.random.default_rng(123).standard_normal(
            (args.calib, *shape)).astype(np.float32)
        t0 = time.time()
        onnx.save(quantize(str(fp32), calib), work / f"{name}_int8.onnx")
        tq = time.time() - t0
        q = str(work / f"{name}_int8.onnx")
        times = {}
        for tgt in ("host", "intel-gpu"):
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "qcompile", "build", q, "--target", tgt,
                            "-o", str(work / f"{name}_{tgt}"), "--quiet"], check=True)
            times[tgt] = time.time() - t0
        cpu = qcompile.load(work / f"{name}_host")
        t0 = time.time()
        gpu = qcompile.load(work / f"{name}_intel-gpu")
        t_load = time.time() - t0
        sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        same, first = [], None
        stats = {"host": [], "intel-gpu": []}
        for i in range(args.inputs):
            x = np.random.default_rng(1000 + i).standard_normal(shape).astype(np.float32)
            feed = {inp.name: x}
            ref = sess.run(None, feed)[0]
            t0 = time.time()
            yg = list(gpu(feed).values())[0]
            if first is None:
                first = time.time() - t0
            yc = list(cpu(feed).values())[0]
            same.append(bool(np.array_equal(yg, yc)))
            for tgt, y in (("host", yc), ("intel-gpu", yg)):
                stats[tgt].append((float(np.abs(y - ref).max()), sqnr(ref, y),
                                   int(np.argmax(y) == np.argmax(ref))))
        feed = gpu.random_inputs(0)
        lat = {"host": float(np.median(cpu.time_runs(feed, args.niter, 1))),
               "intel-gpu": float(np.median(gpu.time_runs(feed, args.niter, 1)))}
        info = gpu.meta["opencl"]
        print(f"\n== {name}: quantized in {tq:.0f}s; built x86 in {times['host']:.0f}s, "
              f"OpenCL in {times['intel-gpu']:.0f}s ({info['kernels']} kernels, "
              f"{info['launches']} launches, {info['int8_dot_product_calls']} DOT4 call "
              f"sites, {sum(v == 'int8 template' for v in info['schedules'].values())} int8 "
              f"template functions)")
        print(f"   OpenCL device: {gpu.device_info()['name']} "
              f"({gpu.device_info()['dot_product_path']}); load+compile {t_load:.1f}s, "
              f"first run {first:.1f}s")
        print(f"   int8 outputs bit-identical x86 vs OpenCL: {all(same)} ({sum(same)}/"
              f"{len(same)} inputs)")
        for tgt in ("host", "intel-gpu"):
            s = np.array(stats[tgt])
            print(f"   vs fp32 [{tgt:9s}] max abs err {s[:, 0].max():.4g}, SQNR "
                  f"{s[:, 1].mean():.2f} dB, top-1 match {int(s[:, 2].sum())}/{len(s)}; "
                  f"latency {lat[tgt] * 1e3:.1f} ms")
        ok = ok and all(same)
    print(f"\nwork dir: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
