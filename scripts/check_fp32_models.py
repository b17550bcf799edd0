#!/usr/bin/env python3
"""Build fp32 ONNX models for several targets, reload each runnable build in a fresh process
and compare with ONNX Runtime fp32 (max relative error on the output).

  python scripts/check_fp32_models.py MODEL.onnx [...] --targets avx2,avx512-vnni --out DIR
Targets this CPU cannot run are built with --cross and reported as not run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RELOAD = """
import sys, numpy as np, qcompile
m = qcompile.load(sys.argv[1])
x = dict(np.load(sys.argv[2]))
out = m(x)
np.savez(sys.argv[3], **out)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--targets", default="avx2,avx512-vnni")
    ap.add_argument("--out", default="/tmp/qcompile-fp32-check")
    ap.add_argument("--tuning-db", default=None)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from qcompile import targets as tg
    from qcompile.build import BuildConfig, build

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        name = Path(model).stem
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {i.name: rng.standard_normal([int(d) for d in i.shape]).astype(np.float32)
                for i in sess.get_inputs()}
        ref = sess.run(None, feed)
        np.savez(out / f"{name}_in.npz", **feed)
        for t in args.targets.split(","):
            spec = tg.all_targets()[t]
            runnable = spec.runnable_here()
            t0 = time.time()
            res = build(model, BuildConfig(target=t, cross=not runnable,
                                           tuning_db=args.tuning_db), out / f"{name}_{t}",
                        quiet=True)
            secs = time.time() - t0
            row = {"model": name, "target": t, "build_s": round(secs, 1),
                   "so_MB": round((out / f"{name}_{t}" / "model.so").stat().st_size / 1e6, 1)}
            if runnable:
                subprocess.run([sys.executable, "-c", RELOAD, str(out / f"{name}_{t}"),
                                str(out / f"{name}_in.npz"), str(out / f"{name}_{t}_out.npz")],
                               check=True)
                got = np.load(out / f"{name}_{t}_out.npz")
                errs = [float(np.abs(got[o.name] - r).max() / max(np.abs(r).max(), 1e-30))
                        for o, r in zip(sess.get_outputs(), ref)]
                row["max_rel_err"] = max(errs)
                row["ok"] = row["max_rel_err"] <= 1e-4
            else:
                row["max_rel_err"] = None
                row["ok"] = f"built (--cross); not run: CPU lacks {', '.join(spec.missing_flags())}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
