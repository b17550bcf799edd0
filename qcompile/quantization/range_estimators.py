"""Range estimators: calibration statistics -> the real-valued range [lo, hi] to quantize.

| name        | range                                                    | needs        |
|-------------|----------------------------------------------------------|--------------|
| minmax      | global min / max over all calibration data               | one pass     |
| mean_minmax | mean over batches of each batch's min / max (NNCF default)| one pass     |
| percentile  | the p-th / (100-p)-th percentile (of |x| when symmetric) | histogram    |
| mse         | the clipping range minimising the expected squared error  | histogram    |
|             | of quantize-dequantize (clipping + rounding noise)        |              |
| kl          | TensorRT's entropy calibration: the threshold minimising  | histogram    |
|             | KL(P_fp32 || P_quantized)                                 |              |

`shape` says what the quantizer will be: "unsigned" ([0, hi]), "symmetric" ([-t, t]) or
"asymmetric" ([lo, hi]); the estimators search in that family. Exact zeros are kept out of the
MSE error model (0 is always a quantization level), which matters after ReLU.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from .statistics import TensorStats

ESTIMATORS = ("minmax", "mean_minmax", "percentile", "mse", "kl")
NEEDS_HISTOGRAM = {"percentile", "mse", "kl"}


def estimate(stats: TensorStats, method: str, shape: str, levels: int,
             percentile: float = 99.99) -> tuple[float, float]:
    """[lo, hi] for one tensor. `shape` in {"unsigned", "symmetric", "asymmetric"}."""
    if not stats.seen:
        raise QuantizationError("estimate: tensor was never seen during calibration")
    if method == "minmax":
        return stats.min, stats.max
    if method == "mean_minmax":
        return stats.mean_min, stats.mean_max
    if method not in NEEDS_HISTOGRAM:
        raise QuantizationError(f"unknown range estimator {method!r}; known: {ESTIMATORS}")
    if stats.hist is None:
        raise QuantizationError(f"range estimator {method!r} needs a histogram pass")
    if method == "percentile":
        return _percentile(stats, shape, percentile)
    if method == "mse":
        return _mse(stats, shape, levels)
    return _kl(stats, shape, levels)


# ---- helpers ---------------------------------------------------------------------------------

def _abs_hist(stats: TensorStats, with_zeros: bool) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of |x| on [0, max|x|] (same number of bins), folded from the x histogram."""
    edges, counts = stats.with_zeros() if with_zeros else stats.without_zeros()
    centers = 0.5 * (edges[:-1] + edges[1:])
    a = max(abs(stats.hist_lo), abs(stats.hist_hi))
    h, e = np.histogram(np.abs(centers), bins=counts.size, range=(0.0, a), weights=counts)
    return e, h


def _quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    total = counts.sum()
    if total <= 0:
        return float(edges[-1])
    cdf = np.cumsum(counts) / total
    k = int(np.searchsorted(cdf, q, side="left"))
    k = min(k, counts.size - 1)
    prev = cdf[k - 1] if k > 0 else 0.0
    frac = 0.0 if cdf[k] == prev else (q - prev) / (cdf[k] - prev)
    return float(edges[k] + np.clip(frac, 0, 1) * (edges[k + 1] - edges[k]))


def _percentile(stats: TensorStats, shape: str, p: float) -> tuple[float, float]:
    if not 50.0 < p <= 100.0:
        raise QuantizationError(f"--percentile {p} must be in (50, 100]")
    q = p / 100.0
    if shape == "asymmetric":
        edges, counts = stats.with_zeros()
        return _quantile(edges, counts, 1.0 - q), _quantile(edges, counts, q)
    e, h = _abs_hist(stats, with_zeros=True)
    t = _quantile(e, h, q)
    return (0.0, t) if shape == "unsigned" else (-t, t)


def _expected_error(centers: np.ndarray, width: float, counts: np.ndarray,
                    lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Expected squared quantize-dequantize error of the histogram for each candidate [lo, hi]
    (vectorised over candidates): clipping error outside, rounding noise inside."""
    keep = counts > 0                      # empty bins add nothing: drop them first
    centers, counts = centers[keep], counts[keep]
    lo, hi = lo[:, None], hi[:, None]
    s = (hi - lo) / (levels - 1)
    c = centers[None, :]
    clip_err = np.where(c < lo, (c - lo) ** 2, 0.0) + np.where(c > hi, (c - hi) ** 2, 0.0)
    # within range: a bin narrower than a step contributes the rounding error of its center
    # (plus its own spread); a wider bin is uniform over steps: s^2/12
    q = np.round((c - lo) / s) * s + lo
    fine = (c - q) ** 2 + width ** 2 / 12.0
    inside = np.where(width < s, np.minimum(fine, s ** 2 / 12.0 + width ** 2 / 12.0), s ** 2 / 12.0)
    err = np.where((c >= lo) & (c <= hi), inside, clip_err)
    return (err * counts[None, :]).sum(axis=1)


def _mse(stats: TensorStats, shape: str, levels: int) -> tuple[float, float]:
    fractions = np.linspace(0.05, 1.0, 96)
    if shape == "asymmetric":
        edges, counts = stats.without_zeros()
        centers, width = 0.5 * (edges[:-1] + edges[1:]), edges[1] - edges[0]
        lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
        f = np.linspace(0.05, 1.0, 96)
        lo, hi = lo0, hi0
        for _ in range(3):                  # coordinate descent: hi, then lo, three rounds
            his = np.maximum(hi0 * f, 1e-12)
            hi = float(his[int(np.argmin(_expected_error(
                centers, width, counts, np.full_like(his, lo), his, levels)))])
            los = lo0 * f
            lo = float(los[int(np.argmin(_expected_error(
                centers, width, counts, los, np.full_like(los, hi), levels)))])
        return lo, hi
    if shape == "unsigned":
        edges, counts = stats.without_zeros()
        keep = edges[:-1] >= 0
        centers = (0.5 * (edges[:-1] + edges[1:]))[keep]
        counts = counts[keep]
        width = edges[1] - edges[0]
        his = max(stats.max, 1e-12) * fractions
        err = _expected_error(centers, width, counts, np.zeros_like(his), his, levels)
        return 0.0, float(his[int(np.argmin(err))])
    # symmetric signed: the grid is [-t*128/127, t]; search t on |x|
    e, h = _abs_hist(stats, with_zeros=False)
    centers, width = 0.5 * (e[:-1] + e[1:]), e[1] - e[0]
    ts = max(abs(stats.min), abs(stats.max), 1e-12) * fractions
    # |x| sees the positive half of the grid: level_high + 1 levels on [0, t]
    err = _expected_error(centers, width, h, np.zeros_like(ts), ts, levels - levels // 2)
    t = float(ts[int(np.argmin(err))])
    return -t, t


def _kl(stats: TensorStats, shape: str, levels: int) -> tuple[float, float]:
    """TensorRT entropy calibration on the |x| histogram (on x >= 0 when unsigned)."""
    e, h = _abs_hist(stats, with_zeros=True)
    nbins = h.size
    nq = levels if shape == "unsigned" else levels // 2
    if nbins <= nq:
        t = float(e[-1])
    else:
        best, best_i = np.inf, nbins
        for i in range(nq, nbins + 1, max(1, nbins // 512)):
            p = h[:i].copy()
            p[-1] += h[i:].sum()
            # quantize the first i bins into nq bins, then expand back over non-empty bins
            idx = (np.arange(i) * nq) // i
            nz = h[:i] > 0
            qsum = np.bincount(idx, weights=h[:i], minlength=nq)
            qcnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=nq)
            with np.errstate(invalid="ignore", divide="ignore"):
                qv = np.where(qcnt[idx] > 0, qsum[idx] / qcnt[idx], 0.0)
            qv = np.where(nz, qv, 0.0)
            ps, qs = p.sum(), qv.sum()
            if ps <= 0 or qs <= 0:
                continue
            pn, qn = p / ps, qv / qs
            m = pn > 0
            with np.errstate(divide="ignore"):
                kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
            if kl < best:
                best, best_i = kl, i
        t = float(e[min(best_i, nbins)])
    if shape == "unsigned":
        return 0.0, t
    if shape == "asymmetric":
        return max(stats.min, -t), min(stats.max, t)
    return -t, t
