"""Compile-time packing of constant weights and per-channel constants (numpy).

The packed layouts are those `compute.py` reads; the trailing block of every packed weight
is the intrinsic's `block_shape` (`[L, 4]` s8, or `[2, L, 2]` s16 for the widened path).
Padded output channels and input channels get zero weights, so padding never changes a
result.
"""
from __future__ import annotations

import numpy as np

from .intrinsics import REDUCE, DotIntrin


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def data_block(channels: int, lanes: int) -> int:
    """Channel block of NCHW[c]c data entering an int8 region: the kernels' lanes, or the
    channel count rounded up to 4 for thin inputs (a 3-channel stem uses NCHW4c)."""
    return lanes if channels >= lanes else round_up(channels, REDUCE)


def conv_blocks(w: np.ndarray, lanes: int, icb: int) -> np.ndarray:
    """OIHW s8 `w` -> `[OC/L, IC/icb, KH, KW, icb/4, L, 4]` s8 (zero-padded)."""
    oc, ic, kh, kw = w.shape
    ocp, icp = round_up(oc, lanes), round_up(ic, icb)
    wp = np.zeros((ocp, icp, kh, kw), dtype=np.int8)
    wp[:oc, :ic] = w
    wp = wp.reshape(ocp // lanes, lanes, icp // icb, icb // REDUCE, REDUCE, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_conv(w: np.ndarray, info: DotIntrin, icb: int, blocks: np.ndarray | None = None):
    """The conv weight for `compute.conv2d_nchwc` with intrinsic `info`."""
    blocks = conv_blocks(w, info.lanes, icb) if blocks is None else blocks
    return info.pack_blocks(blocks)


def dense_blocks(w_kn: np.ndarray, lanes: int) -> np.ndarray:
    """`[K, N]` s8 -> `[N/L, K4/4, L, 4]` s8 (zero-padded)."""
    k, n = w_kn.shape
    kp, np_ = round_up(k, REDUCE), round_up(n, lanes)
    wp = np.zeros((kp, np_), dtype=np.int8)
    wp[:k, :n] = w_kn
    wp = wp.reshape(kp // REDUCE, REDUCE, np_ // lanes, lanes)
    return np.ascontiguousarray(wp.transpose(2, 0, 3, 1))


def pack_dense(w_kn: np.ndarray, info: DotIntrin, blocks: np.ndarray | None = None):
    blocks = dense_blocks(w_kn, info.lanes) if blocks is None else blocks
    return info.pack_blocks(blocks)


def pack_depthwise(w: np.ndarray, lanes: int) -> np.ndarray:
    """`[C, 1, KH, KW]` s8 -> `[C/L, KH, KW, L]` s32 (sign-extended, zero-padded)."""
    c, one, kh, kw = w.shape
    assert one == 1, w.shape
    cp = round_up(c, lanes)
    wp = np.zeros((cp, kh, kw), dtype=np.int32)
    wp[:c] = w[:, 0]
    return np.ascontiguousarray(wp.reshape(cp // lanes, lanes, kh, kw).transpose(0, 2, 3, 1))


def nchw_to_nchwc(x: np.ndarray, cb: int, pad_value=0) -> np.ndarray:
    """numpy NCHW -> NCHW[cb]c (channels padded with `pad_value`)."""
    n, c, h, w = x.shape
    cp = round_up(c, cb)
    out = np.full((n, cp, h, w), pad_value, dtype=x.dtype)
    out[:, :c] = x
    return np.ascontiguousarray(out.reshape(n, cp // cb, cb, h, w).transpose(0, 1, 3, 4, 2))


def nchwc_to_nchw(x: np.ndarray, channels: int) -> np.ndarray:
    n, cc, h, w, cb = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cc * cb, h, w)[:, :channels])


def channel_const(value: np.ndarray, channels: int, lanes: int) -> np.ndarray | None:
    """A constant broadcasting against NCHW data with `channels` channels, re-laid out to
    broadcast against NCHW[L]c (`[1, C/L, 1, 1, L]`, or `[1, 1, 1, 1, 1]` for one value: a
    tensor, so it reaches the PrimFunc as an input and not as an immediate that would make
    tuning records calibration-specific); None if it varies along N, H or W (then it cannot
    follow the data into the blocked layout)."""
    v = np.asarray(value)
    if v.ndim > 4:
        return None
    shape = (1,) * (4 - v.ndim) + v.shape
    n, c, h, w = shape
    if n != 1 or h != 1 or w != 1 or c not in (1, channels):
        return None
    if c == 1:
        return v.reshape((1,) * 5)
    flat = v.reshape(channels)
    cp = round_up(channels, lanes)
    out = np.zeros(cp, dtype=v.dtype)
    out[:channels] = flat
    return np.ascontiguousarray(out.reshape(1, cp // lanes, 1, 1, lanes))
