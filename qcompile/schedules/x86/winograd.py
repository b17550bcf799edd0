"""Exact integer Winograd F(2x2, 3x3) for int8 3x3 stride-1 convolutions.

For targets whose int8 dot product goes through `vpmaddubsw` (no VNNI: avx2, avx512, sse4.2),
each 2x2 block of outputs is computed from a 4x4 input tile with 16 multiplications per
(input, output channel) instead of 36:

    Y = A^T [ (G' g G'^T) (.) (B^T d B) ] A / 4,      G' = 2 G (integer)

    B^T = [[1, 0,-1, 0],     G' = [[2, 0, 0],     A^T = [[1, 1, 1, 0],
           [0, 1, 1, 0],           [1, 1, 1],            [0, 1,-1,-1]]
           [0,-1, 1, 0],           [1,-1, 1],
           [0, 1, 0,-1]]           [0, 0, 2]]

Everything is integer arithmetic, so the result is the direct convolution's s32 sum bit for
bit (no rounding anywhere; the final division by 4 is exact because A^T M A = 4 * conv):

* transformed weights `U = G' g G'^T`: |U| <= 9 * 128 = 1152, stored as s16 (packed once);
* transformed input `V = B^T d B` of u8 data (padded with the zero point): |V| <= 4 * 255
  = 1020, s16;
* the 16 elementwise products summed over the input channels are a batched s16 x s16 GEMM,
  `vpmaddwd` (the `widen16` intrinsic): no s16 intermediate sum exists, pairs of products
  fit s32;
* the s32 accumulators and the output transform's partial sums must not leave s32: the
  dispatch checks `exact_bound(w)` on the constant weights (1020 * the largest sum of |U|
  an output's partial sums can reach) and uses the direct kernel when it does not hold.

Why: on these targets the direct kernel's u8 x s8 pair costs 3 vector uops per 32 MACs
(`vpmaddubsw`, `vpmaddwd` by ones, `vpaddd`), `vpmaddwd` on s16 2 per 16; with 16/36 of the
multiplications the GEMM needs 1.78 uops per 32 direct MACs. On VNNI (`vpdpbusd`, 64 MACs
per uop) the s16 GEMM would be slower than the direct kernel, so VNNI targets do not use it
(`[int8] winograd` in targets/*.toml).

Layouts (L = the intrinsic's lanes, c = the data's channel block):
data `[N, IC/c, H, W, c]` u8 -> V `[N, 4, 4, TH, TW, IC/c, c]` s16 -> M `[N, OC/L, TH, TW,
4, 4, L]` s32 (GEMM over IC) -> output `[N, OC/L, OH, OW, L]` s32 (TH = ceil(OH/2)); weights
`[4, 4, OC/L, IC/c, c/4, 2, L, 2]` s16 (the widen16 block).
"""
from __future__ import annotations

import numpy as np

from tvm import te, tirx

from . import intrinsics
from .packing import round_up

KIND = "f2x2_3x3"
_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)   # G' = 2 G
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.int64)
# each s16 weight element is reused once per 2x2 output tile: measured down to 16 tiles
# (ResNet-50 NNCF 512->512 @7: 1408 -> 1118 us vs the widened direct kernel, caches flushed,
# Zen 3); smaller outputs keep the direct kernel
MIN_TILES = 16
# where the direct kernel can use the (proven exact) saturating vpmaddubsw pair, Winograd
# is 0.77-0.85x its time with warm caches, but its s16 weights (16 / 9 * 2 = 3.6x the int8
# bytes) stream from memory inside a whole model: ResNet-50 256->256 @14 (2.1 MiB) was
# 0.86-0.98x with caches flushed, 512->512 @7 (8.4 MiB) 1.5x. Above this size the direct
# kernel stays (Zen 3, 2 threads, 512 KiB L2 per core)
FAST_MAX_WEIGHT_BYTES = 1 << 20
V_MAX = 4 * 255          # |B^T d B| for u8 d: each entry sums 4 of d's elements with +-1
S32_MAX = 2 ** 31 - 1


def applies(kernel_hw, strides, dilation, groups: int) -> bool:
    """Whether a conv's geometry is F(2x2, 3x3)'s: 3x3, stride 1, dilation 1, not grouped."""
    return (tuple(kernel_hw) == (3, 3) and tuple(strides) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """OIHW s8 3x3 weights -> U = G' g G'^T, `[4, 4, OC, IC]` int64 (exact)."""
    w = np.asarray(w, np.int64)
    assert w.shape[2:] == (3, 3), w.shape
    return np.einsum("ak,oikl,bl->aboi", _G2, w, _G2)


def weight_bytes(w) -> int:
    """Bytes of the transformed s16 weights of an OIHW 3x3 conv (before lane padding)."""
    return 16 * int(w.shape[0]) * int(w.shape[1]) * 2


def exact_bound(w: np.ndarray) -> int:
    """The largest |partial sum| the kernel can form for these weights and any u8 input:
    the GEMM accumulates |V| * |U| over the input channels (<= V_MAX * sum |U|), and the
    output transform adds up to 9 of those accumulators with +-1 (A^T M A). The kernel is
    exact when this is <= 2^31 - 1."""
    u = np.abs(transform_weights(w)).sum(axis=3)              # [4, 4, OC]: sum over IC
    sup = (_AT != 0).astype(np.int64)                          # which M rows each output reads
    worst = np.einsum("ia,jb,abo->ijo", sup, sup, u)          # [2, 2, OC]
    return int(V_MAX * worst.max())


def pack_weights(w: np.ndarray, info: intrinsics.DotIntrin, icb: int) -> np.ndarray:
    """OIHW s8 3x3 -> `[4, 4, OC/L, IC/icb, icb/4, *info.block_shape]` s16 (zero-padded)."""
    assert info.variant == "widen16", info
    u = transform_weights(w)                                   # [4, 4, OC, IC]
    oc, ic = u.shape[2:]
    lanes = info.lanes
    ocp, icp = round_up(oc, lanes), round_up(ic, icb)
    up = np.zeros((4, 4, ocp, icp), np.int64)
    up[:, :, :oc, :ic] = u
    # [4, 4, OC/L, L, IC/icb, icb/4, 4] -> [4, 4, OC/L, IC/icb, icb/4, L, 4]
    up = up.reshape(4, 4, ocp // lanes, lanes, icp // icb, icb // 4, 4)
    up = up.transpose(0, 1, 2, 4, 5, 3, 6)
    return info.pack_blocks(up)


def _bt(f, k):
    """(B^T x)[k] for x = f(0..3), k a loop variable (constant once the loop is unrolled)."""
    return tirx.Select(k == 0, f(0) - f(2), tirx.Select(
        k == 1, f(1) + f(2), tirx.Select(k == 2, f(2) - f(1), f(1) - f(3))))


def _at(f, i):
    """(A^T x)[i] for x = f(0..3)."""
    return tirx.Select(i == 0, f(0) + f(1) + f(2), f(1) - f(2) - f(3))


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, padding=(1, 1, 1, 1), pad_value=0,
                 intrin: str = "") -> te.Tensor:
    """u8 NCHW[c]c data x Winograd weights (`pack_weights`) -> s32 NCHW[L]c, the direct 3x3
    stride-1 convolution's sums exactly. Stages: `data_pad` (zero point, s16), `wino_v`
    (input transform), `wino_gemm` (main block, tensorized with `intrin`), `wino_out`
    (output transform)."""
    from .compute import _attrs, pad_nchwc

    info = intrinsics.by_name(intrin)
    n, icc, h, w, icb = (int(x) for x in data.shape)
    _, _, occ, kicc, icq = (int(x) for x in kernel.shape[:5])
    assert kicc == icc and icq * 4 == icb, (data.shape, kernel.shape)
    assert tuple(int(x) for x in kernel.shape[5:]) == info.block_shape, kernel.shape
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w + left + right - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    # pad to 2 * tiles + 2 rows / columns (an odd output adds one row / column of the pad
    # value, whose outputs are never read)
    dpad = pad_nchwc(data, (top, left, bottom + 2 * th - oh, right + 2 * tw - ow), pad_value,
                     dtype="int16")
    # position-major: for each of the 16 positions, a tile's input channels are contiguous,
    # so the GEMM's reduction streams through memory and a position's slice stays in L1
    v = te.compute(
        (n, 4, 4, th, tw, icc, icb),
        lambda b, xi, nu, ty, tx, c, ch: _bt(
            lambda a: _bt(lambda bb: dpad[b, c, 2 * ty + a, 2 * tx + bb, ch], nu), xi),
        name="wino_v")
    lanes = info.lanes
    r_icc = te.reduce_axis((0, icc), "icc")
    r_icq = te.reduce_axis((0, icq), "icq")
    r_ic4 = te.reduce_axis((0, 4), "ic4")
    m = te.compute(
        (n, occ, th, tw, 4, 4, lanes),
        lambda b, oc, ty, tx, xi, nu, ob: te.sum(
            v[b, xi, nu, ty, tx, r_icc, r_icq * 4 + r_ic4].astype("int32")
            * kernel[(xi, nu, oc, r_icc, r_icq) + info.block_index(ob, r_ic4)].astype("int32"),
            axis=[r_icc, r_icq, r_ic4]),
        name="wino_gemm", attrs=_attrs("winograd", info))
    return te.compute(
        (n, occ, oh, ow, lanes),
        lambda b, oc, y, x, ob: tirx.shift_right(_at(
            lambda a: _at(lambda bb: m[b, oc, y // 2, x // 2, a, bb, ob], x % 2), y % 2),
            tirx.const(2, "int32")),
        name="wino_out")
