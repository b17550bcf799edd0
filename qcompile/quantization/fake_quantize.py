"""FakeQuantize numerics (docs/architecture.md, numerics contract): the numpy reference, and how ranges become FQ parameters.

`fake_quantize()` is OpenVINO opset1 FakeQuantize, element-wise with broadcasting:

    x <= min(il, ih)  -> ol
    x >  max(il, ih)  -> oh
    otherwise         -> round((x - il) / (ih - il) * (L - 1)) / (L - 1) * (oh - ol) + ol

(`round` is half-to-even, like OpenVINO's reference and ONNX `Round`). qcompile always writes
`ol == il` and `oh == ih`.

Range conventions (the same as NNCF, so OpenVINO's low-precision transformations recognise them):
  * unsigned activation  [0, m], L = 256                       -> u8, scale m/255, zp 0
  * signed symmetric     [-m * 128/127, m], L = 256            -> s8, scale m/127, zp 0
  * asymmetric           [lo, hi] with lo = -zp * s exactly    -> u8, scale s, integer zp
  * weights (L = 255)    [-m_c, m_c] per output channel        -> s8 in [-127, 127], zp 0
`activation_range()` / `weight_range()` produce these; `qdq_params()` maps any of them onto
ONNX QuantizeLinear/DequantizeLinear (scale, zero point, dtype).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import QuantizationError

# the smallest range a quantizer gets (a tensor that was constant 0 during calibration)
MIN_RANGE = 1e-6


def fake_quantize(x, il, ih, ol, oh, levels: int) -> np.ndarray:
    """Reference FakeQuantize (float32 arithmetic, like OpenVINO's CPU reference)."""
    x = np.asarray(x, np.float32)
    il, ih, ol, oh = (np.asarray(v, np.float32) for v in (il, ih, ol, oh))
    check_range(il, ih, "fake_quantize")
    lo, hi = np.minimum(il, ih), np.maximum(il, ih)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.round((x - il) / (ih - il) * np.float32(levels - 1))
        y = q / np.float32(levels - 1) * (oh - ol) + ol
    return np.where(x <= lo, ol, np.where(x > hi, oh, y)).astype(np.float32)


def check_range(il, ih, where: str) -> None:
    """An FQ with il == ih or a NaN bound is invalid input (docs/architecture.md, numerics contract)."""
    il, ih = np.asarray(il), np.asarray(ih)
    if np.isnan(il).any() or np.isnan(ih).any():
        raise QuantizationError(f"{where}: FakeQuantize range contains NaN")
    if np.any(np.broadcast_to(il == ih, np.broadcast(il, ih).shape)):
        raise QuantizationError(f"{where}: FakeQuantize input_low == input_high (empty range)")


def symmetric_levels(levels: int) -> tuple[int, int]:
    """(level_low, level_high) of a symmetric quantizer: 256 -> (-128, 127), 255 -> (-127, 127)."""
    return -(levels // 2), levels - 1 - levels // 2


def activation_range(lo: float, hi: float, mode: str, levels: int, unsigned: bool
                     ) -> tuple[float, float]:
    """FQ (il, ih) for an activation whose observed/estimated range is [lo, hi].

    mode "symmetric": unsigned -> [0, hi]; signed -> [-m * |level_low|/level_high, m].
    mode "asymmetric": [lo, hi] widened to contain 0 and shifted so 0 is exactly a level."""
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    if mode == "symmetric":
        if unsigned:
            return 0.0, max(hi, MIN_RANGE)
        m = max(abs(lo), abs(hi), MIN_RANGE)
        ll, lh = symmetric_levels(levels)
        return m * ll / lh, m
    if mode != "asymmetric":
        raise QuantizationError(f"unknown quantization mode {mode!r}")
    if unsigned or lo >= 0:
        return 0.0, max(hi, MIN_RANGE)
    if hi - lo < MIN_RANGE:
        hi = lo + MIN_RANGE
    s = (hi - lo) / (levels - 1)
    zp = float(np.clip(np.round(-lo / s), 0, levels - 1))
    il = -zp * s
    return il, il + (levels - 1) * s


def weight_range(absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight FQ range [-m, m] per channel (m > 0)."""
    m = np.maximum(np.asarray(absmax, np.float64), MIN_RANGE)
    return (-m).astype(np.float32), m.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class QDQParams:
    scale: np.ndarray        # float32, scalar or per channel
    zero_point: np.ndarray   # same shape, dtype uint8 or int8
    dtype: str               # "uint8" | "int8"


def qdq_params(il, ih, levels: int, where: str) -> QDQParams:
    """QuantizeLinear/DequantizeLinear parameters equal to FQ(il, ih, levels), or an error when
    an 8-bit QDQ pair cannot express it (levels other than 255/256)."""
    il, ih = np.asarray(il, np.float64), np.asarray(ih, np.float64)
    check_range(il, ih, where)
    s = (ih - il) / (levels - 1)
    zp = np.round(-il / s)
    if levels == 256 and np.all(zp == 128):
        return QDQParams(s.astype(np.float32), np.zeros(s.shape, np.int8), "int8")
    if levels == 256 and np.all((zp >= 0) & (zp <= 255)):
        return QDQParams(s.astype(np.float32), zp.astype(np.uint8), "uint8")
    if levels == 255 and np.all(zp == 127):
        return QDQParams(s.astype(np.float32), np.zeros(s.shape, np.int8), "int8")
    raise QuantizationError(
        f"{where}: a FakeQuantize with {levels} levels and range [{il.min():g}, {ih.max():g}] has "
        "no 8-bit QuantizeLinear/DequantizeLinear equivalent; use --format fq")


def quantize_weight(w: np.ndarray, il: np.ndarray, ih: np.ndarray, axis: int | None,
                    levels: int) -> np.ndarray:
    """FQ(w) with per-channel ranges along `axis` (None: per tensor)."""
    return fake_quantize(w, *(_bshape(v, w.ndim, axis) for v in (il, ih, il, ih)), levels)


def _bshape(v: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if axis is None or v.ndim == 0 or v.size == 1:
        return v.reshape(()) if v.size == 1 else v
    shape = [1] * rank
    shape[axis % rank] = v.size
    return v.reshape(shape)


def broadcast_shape(v: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Per-channel range values reshaped to broadcast against a rank-`rank` tensor."""
    return _bshape(v, rank, axis)
