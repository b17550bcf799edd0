"""Calibration: run the fp32 model on the calibration subset, collect per-tensor statistics,
and turn them into FakeQuantize ranges for every quantizer of the plan.

One pass gathers min / max, per-batch min / max and, when the activation range estimator needs
one (percentile, mse, kl), a histogram per tensor. Intermediate tensors are exposed as extra
outputs of an ONNX Runtime session; constants and graph inputs are measured directly.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from onnx import ModelProto

from ..errors import QuantizationError
from .fake_quantize import (MIN_RANGE, activation_range, quantize_weight, symmetric_levels,
                            weight_range)
from .graph import Graph
from .placement import Plan, Quantizer
from .progress import Progress
from .range_estimators import NEEDS_HISTOGRAM, estimate
from .runner import RUNS_IN_FLIGHT, Runner, batches
from . import stats_graph
from .statistics import TensorStats


@dataclasses.dataclass
class CalibrationSettings:
    activation_estimator: str = "mse"
    weight_estimator: str = "minmax"
    percentile: float = 99.99
    histogram_bins: int = 2048
    histogram_sample: int = 0        # values per tensor and batch in the histogram (0: all)
    reduce_in_graph: bool = True     # stats_graph: reductions inside the session
    half_range_weights: frozenset = frozenset()     # weight quantizer ids (overflow fix)
    batch_size: int = 1
    threads: int | None = None
    progress: bool | None = None


def collect(model: ModelProto, g: Graph, plan: Plan, samples: list[dict[str, np.ndarray]],
            s: CalibrationSettings) -> dict[str, TensorStats]:
    """Statistics for every activation quantizer's tensor."""
    acts = {q.tensor for q in plan.quantizers.values() if q.kind == "activation"}
    stats = {t: TensorStats() for t in acts}
    consts = {t for t in acts if g.is_const(t)}
    for t in consts:
        stats[t] = TensorStats.of_constant(g.const(t), s.histogram_bins)
    computed = sorted(acts - consts - set(g.graph_inputs))
    bins = s.histogram_bins if s.activation_estimator in NEEDS_HISTOGRAM else None
    # min / max / finiteness and the histogram's sample are reduced inside the session
    # (stats_graph); tensors it cannot reduce (dynamic shapes) come out whole
    edit, reduced, whole = (stats_graph.build(model, g, computed, bins, s.histogram_sample)
                            if s.reduce_in_graph else (None, [], computed))
    runner = Runner(model, whole, threads=s.threads, edit=edit, workers=RUNS_IN_FLIGHT)
    fetch = stats_graph.outputs(reduced) + whole
    full: Runner | None = None              # whole tensors, for a batch with NaN / Inf
    feeds_of = [t for t in acts if t in g.graph_inputs]
    desc = "statistics" + (f" ({s.activation_estimator} histograms)" if bins else "")
    groups = list(batches(samples, s.batch_size))

    def feed_of(k: int, feed: dict) -> dict:
        return {**feed, stats_graph.OFFSET: stats_graph.offset(k)} if reduced else feed

    # the session runs the next batches while this loop takes the statistics of one, in
    # order: the same statistics as a serial loop
    outs = (runner.run_all(feed_of(k, f) for k, (f, _) in enumerate(groups, 1))
            if fetch else ({} for _ in groups))
    with Progress(len(samples), desc, s.progress) as bar:
        for (feed, n), out in zip(groups, outs):
            tensors, red = whole + feeds_of, reduced
            if reduced and not stats_graph.finite(out, reduced):
                # NaN / Inf somewhere: this batch's tensors whole, so they are counted exactly
                full = full or Runner(model, computed, threads=s.threads)
                out = full.run(feed, computed)
                tensors, red = computed + feeds_of, []
            for t in feeds_of:
                out[t] = feed[t]
            stats_graph.add(stats, out, red, bins)
            for t in tensors:
                stats[t].update(out[t], bins, s.histogram_sample)
            bar.update(n)
    return stats


def check_samples(samples: list[dict[str, np.ndarray]]) -> None:
    """Refuse calibration data holding NaN or Inf: statistics would silently leave those
    values out, so the ranges would describe data the model never sees."""
    bad = []
    for i, feed in enumerate(samples):
        for name, arr in feed.items():
            a = np.asarray(arr)
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                n_nan = int(np.isnan(a).sum())
                n_inf = int(np.isinf(a).sum())
                bad.append(f"sample {i} input {name!r}: {n_nan} NaN, {n_inf} Inf of {a.size}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise QuantizationError(
            "calibration data holds non-finite values: " + "; ".join(bad[:5]) + more +
            ". Clean the data (e.g. np.nan_to_num) or drop those samples.")


def non_finite(stats: dict[str, TensorStats]) -> dict[str, int]:
    """Activations that produced NaN / Inf on finite calibration data (e.g. a -inf attention
    mask, log(0)): tensor -> count. Their ranges come from the finite values only; the
    quantization report lists them."""
    return {t: s.non_finite for t, s in sorted(stats.items()) if s.non_finite}


def _reduce_axes(w: np.ndarray, q: Quantizer) -> tuple[int, ...] | None:
    """The axes a weight's per-channel statistics reduce over (None: per tensor)."""
    return tuple(i for i in range(w.ndim) if i != q.axis) if q.axis is not None else None


def zero_ranges(g: Graph, plan: Plan) -> dict[str, str]:
    """Quantizers whose range is empty before widening to `MIN_RANGE`: an activation whose
    calibrated range is ~[0, 0] (0 on every sample, or a percentile/MSE estimate of a mostly
    zero tensor: its rare non-zero values then clip), weight channels that are all zero.
    Usually dead units or calibration data that misses the model's domain, so the
    quantization report and the log list them: tensor -> what is empty."""
    out: dict[str, str] = {}
    for q in plan.quantizers.values():
        if q.kind == "activation":
            lo, hi = q.raw_range if q.raw_range is not None else (-1.0, 1.0)
            if max(hi, 0.0) - min(lo, 0.0) < MIN_RANGE:   # what activation_range widens
                out[q.tensor] = (f"calibrated activation range [{lo:g}, {hi:g}] "
                                 f"({q.estimator}) is empty; widened to {MIN_RANGE:g}")
        elif q.kind == "weight" and g.is_const(q.tensor):
            w = g.const(q.tensor)
            axes = _reduce_axes(w, q)
            zero = np.flatnonzero(np.atleast_1d(np.abs(w).max(axis=axes)) == 0)
            if zero.size:
                shown = ", ".join(map(str, zero[:8])) + (" ..." if zero.size > 8 else "")
                out[q.tensor] = (f"{zero.size} all-zero weight channel(s) along axis {q.axis}: "
                                 f"{shown}" if q.axis is not None else "all-zero weights")
    return out


def assign_ranges(g: Graph, plan: Plan, stats: dict[str, TensorStats], s: CalibrationSettings
                  ) -> None:
    """Fill input_low / input_high of every quantizer (unified groups share one range)."""
    for q in plan.quantizers.values():
        if q.kind == "weight":
            _weight(g, q, s.weight_estimator)
            if q.qid in s.half_range_weights and q.mode == "symmetric":
                # 7-bit weights on the 8-bit grid: |q| <= 64, so 2 * 255 * 64 < 2^15
                q.input_low, q.input_high = q.input_low * 2, q.input_high * 2
                q.estimator += "+half-range"
            continue
        st = stats[q.tensor]
        if not st.seen:
            raise QuantizationError(f"tensor {q.tensor!r} produced no finite float values on the "
                                    "calibration data")
        q.unsigned = bool(q.nonnegative or st.min >= 0)
        shape = "unsigned" if q.unsigned else ("symmetric" if q.mode == "symmetric"
                                               else "asymmetric")
        q.estimator = s.activation_estimator
        lo, hi = estimate(st, s.activation_estimator, shape, q.levels, s.percentile)
        q.raw_range = (float(lo), float(hi))
    for members in plan.groups().values():
        qs = [plan.quantizers[m] for m in members]
        lo = min(q.raw_range[0] for q in qs)
        hi = max(q.raw_range[1] for q in qs)
        unsigned = all(q.unsigned for q in qs)
        for q in qs:
            q.raw_range, q.unsigned = (lo, hi), unsigned
    for q in plan.quantizers.values():
        if q.kind == "activation":
            il, ih = activation_range(*q.raw_range, q.mode, q.levels, q.unsigned)
            q.input_low, q.input_high = np.float32(il), np.float32(ih)


def _weight(g: Graph, q: Quantizer, method: str) -> None:
    w = g.const(q.tensor).astype(np.float32)
    axes = _reduce_axes(w, q)
    q.estimator = method
    if q.mode == "asymmetric":
        lo = np.minimum(w.min(axis=axes), 0.0)
        hi = np.maximum(w.max(axis=axes), 0.0)
        pairs = [activation_range(a, b, "asymmetric", q.levels, False)
                 for a, b in zip(np.atleast_1d(lo), np.atleast_1d(hi))]
        q.input_low = np.array([p[0] for p in pairs], np.float32).reshape(np.shape(lo))
        q.input_high = np.array([p[1] for p in pairs], np.float32).reshape(np.shape(hi))
        q.unsigned = False
        return
    absmax = np.abs(w).max(axis=axes)
    if method == "mse":
        absmax = _weight_mse(w, absmax, q)
    elif method != "minmax":
        raise QuantizationError(f"unknown weight range estimator {method!r} (--weight-stat); "
                                "use minmax or mse")
    il, ih = weight_range(absmax)
    ll, lh = symmetric_levels(q.levels)
    if q.levels % 2 == 0:                    # an even level count puts one more level below 0
        il = (ih * ll / lh).astype(np.float32)
    q.input_low, q.input_high, q.unsigned = il, ih, False


def _weight_mse(w: np.ndarray, absmax: np.ndarray, q: Quantizer) -> np.ndarray:
    """Per-channel clipping threshold minimising the squared weight error."""
    axes = _reduce_axes(w, q)
    best = np.full(np.shape(absmax), np.inf)
    best_m = np.asarray(absmax, np.float64).copy()
    for f in np.linspace(0.6, 1.0, 21):
        m = np.maximum(absmax * f, 1e-12)
        il, ih = weight_range(m)
        err = ((w - quantize_weight(w, il, ih, q.axis, q.levels)) ** 2).sum(axis=axes)
        better = err < best
        best = np.where(better, err, best)
        best_m = np.where(better, m, best_m)
    return best_m.astype(np.float32)
