#!/usr/bin/env python3
"""Interleaved latency comparison of qcompile builds against ONNX Runtime and OpenVINO.

Each case is LABEL=KIND:PATH with KIND one of
  qcompile   a qcompile build directory
  ort        an ONNX file run by onnxruntime (CPU EP, intra-op threads = --threads)
  ov         an ONNX file run by OpenVINO's CPU plugin (its default precision; int8 models
             run in int8)
  ov-f32     the same with INFERENCE_PRECISION_HINT=f32 (OpenVINO's default here is bf16)
  ov@ISA     OpenVINO's CPU plugin with oneDNN capped at ISA (ONEDNN_MAX_CPU_ISA, e.g.
             ov@AVX512_CORE_VNNI on a CPU with AMX: the ISA qcompile's avx512-vnni target
             uses). oneDNN reads the cap once per process, so this case runs in a worker
             subprocess (still interleaved; timings are taken inside the worker).
All cases get the same random input. Rounds are interleaved (case A, B, C, A, B, C, ...) so a
noisy shared machine affects every case alike; the table gives medians over all rounds and
ratios to the --baseline case.

  python scripts/bench_compare.py --case qc=qcompile:build/r50 --case ort=ort:resnet50.onnx \
      --baseline ort --rounds 5 --iters 20
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def make_qcompile(path, threads):
    import qcompile

    m = qcompile.load(path)

    def feed_names():
        return [(t.name, t.shape, t.dtype) for t in m.inputs]

    def run(feed):
        m(feed)

    def timed(feed, n):
        return list(m.time_runs(feed, n, warmup=0))

    return feed_names(), run, timed


def make_ort(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = []
    for i in s.get_inputs():
        dt = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8"}[i.type]
        names.append((i.name, tuple(int(d) for d in i.shape), dt))

    def run(feed):
        s.run(None, feed)

    return names, run, None


def make_ov(path, threads, f32=False):
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    cm = core.compile_model(core.read_model(str(path)), "CPU", cfg)
    req = cm.create_infer_request()
    names = [(p.get_any_name(), tuple(p.get_shape()), str(p.get_element_type().to_dtype()))
             for p in cm.inputs]

    def run(feed):
        req.infer(feed)

    return names, run, None


def make_ov_isa(path, threads, isa):
    """An OpenVINO case in a worker process with ONEDNN_MAX_CPU_ISA=isa."""
    import os
    import subprocess
    import tempfile

    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", f"ov:{path}",
                             "--threads", str(threads), "--case", "unused=ov:unused"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    first = proc.stdout.readline()
    if not first:
        raise RuntimeError(f"the OpenVINO worker (ONEDNN_MAX_CPU_ISA={isa}) for {path} exited "
                           f"with {proc.wait()} before it was ready (its error is above)")
    names = [tuple(n) for n in json.loads(first)]
    names = [(n, tuple(shape), dt) for n, shape, dt in names]
    tmp = tempfile.mkdtemp(prefix="qcompile_bench_")
    state = {"feed_id": None}

    def ask(feed, n, timed):
        if state["feed_id"] is not id(feed):
            fpath = os.path.join(tmp, "feed.npz")
            np.savez(fpath, **feed)
            proc.stdin.write(f"feed {fpath}\n")
            proc.stdin.flush()
            proc.stdout.readline()
            state["feed_id"] = id(feed)
        proc.stdin.write(f"{'time' if timed else 'run'} {n}\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def run(feed):
        ask(feed, 1, False)

    def timed(feed, n):
        return ask(feed, n, True)

    return names, run, timed


def worker(spec: str, threads: int) -> int:
    """--worker KIND:PATH: serve 'feed FILE' / 'run N' / 'time N' on stdin (make_ov_isa)."""
    kind, path = spec.split(":", 1)
    names, run, _ = KINDS[kind](path, threads)
    print(json.dumps([[n, list(shape), dt] for n, shape, dt in names]), flush=True)
    feed = None
    for line in sys.stdin:
        cmd, arg = line.split(None, 1)
        if cmd == "feed":
            with np.load(arg.strip()) as z:
                feed = {k: z[k] for k in z.files}
            print("ok", flush=True)
            continue
        times = []
        for _ in range(int(arg)):
            t0 = time.perf_counter()
            run(feed)
            times.append(time.perf_counter() - t0)
        print(json.dumps(times if cmd == "time" else []), flush=True)
    return 0


KINDS = {"qcompile": make_qcompile, "ort": make_ort, "ov": make_ov,
         "ov-f32": lambda p, t: make_ov(p, t, f32=True)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", action="append", required=True, metavar="LABEL=KIND:PATH")
    ap.add_argument("--baseline", help="label the ratios are relative to (default: first case)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="timed runs per case per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of idle before each case's round (other runtimes' spinning "
                    "threads go to sleep)")
    ap.add_argument("--round-warmup", type=int, default=2,
                    help="untimed runs at the start of each case's round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads)

    cases = []
    for c in args.case:
        label, rest = c.split("=", 1)
        kind, path = rest.split(":", 1)
        if kind.startswith("ov@"):
            try:
                names, run, timed = make_ov_isa(path, args.threads, kind[3:])
            except RuntimeError as err:  # e.g. OpenVINO cannot compile a node at that ISA
                print(f"case {label} left out: {err}", file=sys.stderr)
                continue
        elif kind not in KINDS:
            ap.error(f"--case {c}: kind must be one of {sorted(KINDS)} or ov@ISA")
        else:
            names, run, timed = KINDS[kind](path, args.threads)
        cases.append({"label": label, "kind": kind, "path": path, "inputs": names, "run": run,
                      "timed": timed, "times": []})
    rng = np.random.default_rng(args.seed)
    feed = {}
    for name, shape, dtype in cases[0]["inputs"]:
        feed[name] = rng.standard_normal(shape).astype(dtype) if "float" in dtype else \
            rng.integers(0, 100, shape).astype(dtype)
    for c in cases:
        c["feed"] = {n: feed[n] if n in feed else feed[list(feed)[i]]
                     for i, (n, _, _) in enumerate(c["inputs"])}
        for _ in range(args.warmup):
            c["run"](c["feed"])
    for r in range(args.rounds):
        for c in cases:
            # the previous case's runtime may still have threads spinning (ORT's thread pool,
            # OpenVINO's TBB arena) on these 2 cores: let them go idle, then warm this case up
            time.sleep(args.settle)
            for _ in range(args.round_warmup):
                c["run"](c["feed"])
            if c["timed"] is not None:
                c["times"].extend(c["timed"](c["feed"], args.iters))
            else:
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    c["run"](c["feed"])
                    c["times"].append(time.perf_counter() - t0)
    base = next((c for c in cases if c["label"] == args.baseline), cases[0])
    base_med = float(np.median(base["times"]))
    print(f"{'case':24s} {'kind':9s} {'median ms':>10s} {'p90 ms':>9s} {'min ms':>8s} "
          f"{'vs ' + base['label']:>12s}")
    out = []
    for c in cases:
        t = np.asarray(c["times"]) * 1e3
        row = {"label": c["label"], "kind": c["kind"], "path": c["path"],
               "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
               "min_ms": float(t.min()), "ratio": float(np.median(t) / (base_med * 1e3))}
        out.append(row)
        print(f"{c['label']:24s} {c['kind']:9s} {row['median_ms']:10.3f} {row['p90_ms']:9.3f} "
              f"{row['min_ms']:8.3f} {row['ratio']:11.2f}x")
    print(f"({args.rounds} interleaved rounds x {args.iters} runs, {args.threads} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
