"""Accuracy-aware quantization: return the most sensitive layers to fp32 until the metric drop
is within bounds.

1. Evaluate the user metric on the fp32 model and on the fully quantized model (simulated
   FakeQuantize in ONNX Runtime). Done if the drop is already within `max_drop`.
2. Rank every quantized op by sensitivity: the output SQNR gain (vs fp32, on a small ranking
   subset) when only that op is returned to fp32. Ranking with a per-sample proxy instead of the
   user metric keeps it cheap (one short run per op) and works for any metric.
3. Revert ops in rank order, one at a time, re-evaluating the metric after each, until the drop
   is met, `max_reverts` is reached, or nothing is left. Every step is recorded in the report.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from onnx import ModelProto

from .export import write
from .metrics import sqnr_db
from .placement import Plan
from .progress import Progress
from .runner import Runner


@dataclasses.dataclass
class Step:
    reverted: str
    op_type: str
    sensitivity_db: float
    metric: float
    drop: float


@dataclasses.dataclass
class AccuracyAwareResult:
    metric_fp32: float
    metric_quantized: float
    metric_final: float
    drop_final: float
    max_drop: float
    drop_type: str
    met: bool
    ranking: list[tuple[str, float]]
    steps: list[Step]
    reverted: list[str]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ranking"] = [{"node": n, "sqnr_gain_db": s} for n, s in self.ranking]
        return d


def _predictor(model: ModelProto, threads: int | None) -> Callable:
    r = Runner(model, threads=threads, optimize=False)
    names = [o.name for o in model.graph.output]

    def predict(sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = r.run(sample, names)
        return [out[n] for n in names]
    return predict


def _drop(fp: float, q: float, kind: str) -> float:
    return (fp - q) / abs(fp) if kind == "relative" and fp != 0 else fp - q


def _mean_sqnr(predict, samples, refs) -> float:
    vals = []
    for s, ref in zip(samples, refs):
        out = predict(s)
        vals.append(min(100.0, float(np.mean([sqnr_db(r, o) for r, o in zip(ref, out)]))))
    return float(np.mean(vals))


def run(model: ModelProto, plan: Plan, metric: Callable, val_samples: list, rank_samples: list,
        max_drop: float, drop_type: str = "absolute", max_reverts: int = -1,
        threads: int | None = None, progress: bool | None = None,
        log: Callable[[str], None] = lambda s: None) -> AccuracyAwareResult:
    fp_predict = _predictor(model, threads)
    m_fp = float(metric(fp_predict, val_samples))
    reverted: list[str] = []

    def evaluate(rev) -> float:
        return float(metric(_predictor(write(model, plan, "sim", set(rev)), threads), val_samples))

    m_q = evaluate(reverted)
    log(f"accuracy-aware: metric fp32 {m_fp:.6g}, quantized {m_q:.6g} "
        f"(drop {_drop(m_fp, m_q, drop_type):.6g}, allowed {max_drop:g})")
    steps: list[Step] = []
    ranking: list[tuple[str, float]] = []
    m_cur = m_q
    if _drop(m_fp, m_q, drop_type) > max_drop:
        refs = [fp_predict(s) for s in rank_samples]
        base = _mean_sqnr(_predictor(write(model, plan, "sim"), threads), rank_samples, refs)
        with Progress(len(plan.ops), "ranking layers", progress) as bar:
            for name in plan.ops:
                p = _predictor(write(model, plan, "sim", {name}), threads)
                ranking.append((name, _mean_sqnr(p, rank_samples, refs) - base))
                bar.update()
        ranking.sort(key=lambda x: -x[1])
        for name, gain in ranking:
            if 0 <= max_reverts <= len(reverted):
                break
            reverted.append(name)
            m_cur = evaluate(reverted)
            d = _drop(m_fp, m_cur, drop_type)
            steps.append(Step(name, plan.ops[name].op_type, gain, m_cur, d))
            log(f"accuracy-aware: reverted {name} ({plan.ops[name].op_type}, +{gain:.2f} dB) "
                f"-> metric {m_cur:.6g}, drop {d:.6g}")
            if d <= max_drop:
                break
    d = _drop(m_fp, m_cur, drop_type)
    return AccuracyAwareResult(m_fp, m_q, m_cur, d, max_drop, drop_type, d <= max_drop,
                               ranking, steps, reverted)
