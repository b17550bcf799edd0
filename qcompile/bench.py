"""Latency statistics and per-op counters for a loaded build (`qcompile bench`)."""
from __future__ import annotations

import numpy as np


def latency_stats(seconds: np.ndarray, batch: int = 1) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    med = float(np.median(ms))
    return {
        "iterations": int(ms.size),
        "median_ms": med,
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "throughput_fps": (batch * 1e3 / med) if med > 0 else float("inf"),
    }


def format_stats(s: dict) -> str:
    return (f"Count:      {s['iterations']} iterations\n"
            f"Latency:\n"
            f"   Median:  {s['median_ms']:.3f} ms\n"
            f"   P90:     {s['p90_ms']:.3f} ms\n"
            f"   Min:     {s['min_ms']:.3f} ms\n"
            f"   Max:     {s['max_ms']:.3f} ms\n"
            f"Throughput: {s['throughput_fps']:.2f} FPS")


def counters(model, feed, meta: dict) -> str:
    """benchmark_app-style per-layer counters from the Relax VM profiler."""
    from .relay_passes.use_inplace_outputs import INPLACE_SUFFIX
    from .report import render_table

    kernels = {k["function"]: k for k in meta.get("kernels", [])}
    rows = [(name, sec * 1e6) for name, sec in model.profile(feed)]
    agg: dict[str, list] = {}
    for name, dur in rows:
        agg.setdefault(name, []).append(dur)
    total = sum(sum(v) for v in agg.values()) or 1.0
    cells = []
    for name, durs in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
        # an in-place variant (relay_passes/use_inplace_outputs.py) is listed under its kernel
        k = kernels.get(name) or kernels.get(name.removesuffix(INPLACE_SUFFIX), {})
        cells.append([name[:48], str(len(durs)), f"{sum(durs):.1f}",
                      f"{100 * sum(durs) / total:.2f}", k.get("precision", "-"),
                      ", ".join(k.get("nodes", [])[:4])])
    # benchmark_app's columns, for reading the two reports side by side
    table = render_table([("layer (kernel)", "left"), ("calls", "right"), ("time us", "right"),
                          ("%", "right"), ("precision", "left"), ("nodes", "left")], cells)
    return (table + f"\nTotal: {total / 1e3:.3f} ms in "
            f"{sum(len(v) for v in agg.values())} calls")
