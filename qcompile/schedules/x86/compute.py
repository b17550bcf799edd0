"""TE computes of the packed int8 ops (s32 accumulators), emitted into Relax with `call_te`.

Each op's main (reduction) block carries two annotations that the schedules read:
``schedule_rule`` (a MetaSchedule custom rule name, `RULES`) and ``qcompile.dot_intrin`` (the
tensor intrinsic it is tensorized with, `intrinsics.DotIntrin.name`). The epilogue (bias,
requantize, activation, residual add) is *not* part of these computes: it stays ordinary
elementwise Relax ops that `FuseOps`/`FuseTIR` merge into the same PrimFunc, where
`schedule.py` places it inside the kernel's tile loops.

Layouts (L = the intrinsic's lanes, c = a data channel block, a multiple of 4):

* conv data ``NCHW[c]c`` u8 ``[N, IC/c, H, W, c]``; weight ``[OC/L, IC/c, KH, KW, c/4, *block]``;
  output ``NCHW[L]c`` s32 ``[N, OC/L, OH, OW, L]``.
* depthwise data/output ``NCHW[L]c``; weight ``[C/L, KH, KW, L]`` s32 (s8 sign-extended); the
  padding stage zero-extends the activations to s32, one multiply-accumulate instruction
  per tap and L channels (`intrinsics.DepthwiseIntrin`).
* dense ``A[..., K]`` u8 x ``W[N/L, K4/4, *block]`` -> ``[..., N]`` s32 (K4 = K rounded up
  to 4; A is zero-padded along K inside the compute when K % 4 != 0; the kernel computes
  whole blocks of L columns and a `slice_n` stage drops the padding).
* batch-matmul ``A[..., M, K]`` u8 x ``Bp[..., N/L, K4/4, *block]`` (packed at run time by
  `pack_rhs`, from ``[..., K, N]`` or a transposed ``[..., N, K]``) -> ``[..., M, N]`` s32.

With the `widen16` intrinsic the activations are read as s16: the padding / K-padding stage
widens them on the way, or a `*_widen` stage does when there is no padding.
"""
from __future__ import annotations

import tvm
from tvm import te, tirx

from . import intrinsics

RULES = {
    "conv2d": "qcompile_x86_conv2d_nchwc_int8",
    "depthwise": "qcompile_x86_depthwise_nchwc_int8",
    "dense": "qcompile_x86_dense_int8",
    "batch_matmul": "qcompile_x86_batch_matmul_int8",
    "max_pool": "qcompile_x86_max_pool_nchwc",
    "winograd": "qcompile_x86_conv2d_winograd_int8",
}
INTRIN_ATTR = "qcompile.dot_intrin"


def _attrs(op: str, info: intrinsics.DotIntrin | None) -> dict:
    attrs = {"schedule_rule": RULES[op]}
    if info is not None:
        attrs[INTRIN_ATTR] = info.name
    return attrs


def _i32(x):
    return x.astype("int32")


def pad_nchwc(data: te.Tensor, pad_hw: tuple[int, int, int, int], pad_value,
              name: str = "data_pad", dtype: str | None = None) -> te.Tensor:
    """Spatially pad an NCHW[c]c tensor with `pad_value` (the activation zero point: an int,
    or a one-element tensor, which keeps the calibration out of the kernel's structure),
    converting it to `dtype` on the way (the widen16 kernels read s16 activations)."""
    top, left, bottom, right = pad_hw
    dtype = dtype or data.dtype
    if isinstance(pad_value, te.Tensor):
        fill = pad_value[(0,) * len(pad_value.shape)].astype(dtype)
    else:
        fill = tirx.const(pad_value, dtype)
    if not any(pad_hw):
        if dtype == data.dtype:
            return data
        return te.compute(data.shape, lambda *i: data[i].astype(dtype), name="data_widen")
    n, cc, h, w, cb = data.shape
    return te.compute(
        (n, cc, h + top + bottom, w + left + right, cb),
        lambda i, c, y, x, b: tirx.if_then_else(
            tirx.all(y >= top, y < h + top, x >= left, x < w + left),
            data[i, c, tirx.max(tirx.min(y - top, h - 1), 0),
                 tirx.max(tirx.min(x - left, w - 1), 0), b].astype(dtype),
            fill),
        name=name)


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides=(1, 1), padding=(0, 0, 0, 0),
                 dilation=(1, 1), pad_value=0, intrin: str = "") -> te.Tensor:
    """u8 NCHW[c]c data x packed s8/s16 weight -> s32 NCHW[L]c, tensorizable with `intrin`."""
    info = intrinsics.by_name(intrin)
    n, icc, h, w, icb = (int(x) for x in data.shape)
    occ, kicc, kh, kw, icq = (int(x) for x in kernel.shape[:5])
    assert kicc == icc and icq * 4 == icb, (data.shape, kernel.shape)
    assert tuple(int(x) for x in kernel.shape[5:]) == info.block_shape, kernel.shape
    sh, sw = strides
    dh, dw = dilation
    dpad, oh, ow, r_kh, r_kw = _sliding_window(data, kh, kw, strides, padding, dilation,
                                               pad_value, dtype=info.act_dtype)
    lanes = info.lanes
    r_icc = te.reduce_axis((0, icc), "icc")
    r_icq = te.reduce_axis((0, icq), "icq")
    r_ic4 = te.reduce_axis((0, 4), "ic4")
    return te.compute(
        (n, occ, oh, ow, lanes),
        lambda b, oc, y, x, ob: te.sum(
            _i32(dpad[b, r_icc, y * sh + r_kh * dh, x * sw + r_kw * dw, r_icq * 4 + r_ic4])
            * _i32(kernel[(oc, r_icc, r_kh, r_kw, r_icq) + info.block_index(ob, r_ic4)]),
            axis=[r_icc, r_kh, r_kw, r_icq, r_ic4]),
        name="conv2d_nchwc_int8", attrs=_attrs("conv2d", info))


def _sliding_window(data, kh, kw, strides, padding, dilation, pad_value, name="data_pad",
                    dtype=None):
    """(padded data, output height, output width, kh and kw reduce axes) of a window op on
    NCHW[c]c data (floor mode); the padded data is read as `dtype` (default: data's)."""
    sh, sw = strides
    dh, dw = dilation
    dpad = pad_nchwc(data, padding, pad_value, name=name, dtype=dtype)
    ph, pw = int(dpad.shape[2]), int(dpad.shape[3])
    oh = (ph - (kh - 1) * dh - 1) // sh + 1
    ow = (pw - (kw - 1) * dw - 1) // sw + 1
    return dpad, oh, ow, te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")


def depthwise_nchwc(data: te.Tensor, kernel: te.Tensor, strides=(1, 1), padding=(0, 0, 0, 0),
                    dilation=(1, 1), pad_value=0, intrin: str = "") -> te.Tensor:
    """Depthwise (groups = C) u8 NCHW[L]c x s32 `[C/L, KH, KW, L]` -> s32 NCHW[L]c.

    The padding stage (`data_pad`, computed per band of rows by the schedule) zero-extends
    the activations to s32; each tap is `acc + a * w` over the L channel lanes, tensorized
    with `intrin` (`intrinsics.depthwise`: `vpdpbusd` or `vpmaddwd` on the widened lanes,
    exact for every u8 x s8 input)."""
    n, cc, h, w, lanes = (int(x) for x in data.shape)
    kcc, kh, kw, kl = (int(x) for x in kernel.shape)
    assert kcc == cc and kl == lanes, (data.shape, kernel.shape)
    assert kernel.dtype == "int32", kernel.dtype
    info = intrinsics.by_name(intrin)
    assert isinstance(info, intrinsics.DepthwiseIntrin) and info.lanes == lanes, (intrin, lanes)
    sh, sw = strides
    dh, dw = dilation
    dpad, oh, ow, r_kh, r_kw = _sliding_window(data, kh, kw, strides, padding, dilation,
                                               pad_value, dtype="int32")
    return te.compute(
        (n, cc, oh, ow, lanes),
        lambda b, c, y, x, l: te.sum(
            dpad[b, c, y * sh + r_kh * dh, x * sw + r_kw * dw, l] * kernel[c, r_kh, r_kw, l],
            axis=[r_kh, r_kw]),
        name="depthwise_nchwc_int8", attrs=_attrs("depthwise", info))


def max_pool_nchwc(data: te.Tensor, pool=(3, 3), strides=(2, 2), padding=(0, 0, 0, 0),
                   dilation=(1, 1)) -> te.Tensor:
    """Max-pool of an NCHW[L]c integer tensor (floor mode). Without dilation, and with every
    window holding an image element, the window reads clamped indices (no pad stage);
    otherwise the padding is its own stage with the dtype's minimum (what TVM's pool pads
    with, and the identity of max). Either way the window reduction has no bounds test and
    vectorizes over the lanes; TVM's own legalized pool inlined an `if_then_else` into it
    and ran scalar (ResNet-50's 3x3 s2 max-pool: 140 us vs OpenVINO's 45, AVX-512 VNNI)."""
    n, cc, h, w, lanes = (int(x) for x in data.shape)
    kh, kw = pool
    sh, sw = strides
    dh, dw = dilation
    top, left, bottom, right = padding
    if (dh, dw) == (1, 1) and max(top, bottom) < kh and max(left, right) < kw:
        # every window holds a real element, and (dilation 1) the window is a run of rows /
        # columns: an index clamped into the image lands on an element of the same window,
        # so max over clamped indices == max over the padded image. No pad stage: the pad
        # pass over the whole input cost 4x the pool itself (ResNet-50: 522 us vs 128 us for
        # OpenVINO, AVX2 Zen 3).
        oh = (h + top + bottom - kh) // sh + 1
        ow = (w + left + right - kw) // sw + 1
        r_kh, r_kw = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
        return te.compute(
            (n, cc, oh, ow, lanes),
            lambda b, c, y, x, l: te.max(
                data[b, c, tirx.max(tirx.min(y * sh + r_kh - top, h - 1), 0),
                     tirx.max(tirx.min(x * sw + r_kw - left, w - 1), 0), l],
                axis=[r_kh, r_kw]),
            name="max_pool_nchwc", attrs=_attrs("max_pool", None))
    lowest = int(tvm.tirx.min_value(data.dtype).value)
    dpad, oh, ow, r_kh, r_kw = _sliding_window(data, kh, kw, strides, padding, dilation,
                                               lowest, name="pool_pad")
    return te.compute(
        (n, cc, oh, ow, lanes),
        lambda b, c, y, x, l: te.max(dpad[b, c, y * sh + r_kh * dh, x * sw + r_kw * dw, l],
                                     axis=[r_kh, r_kw]),
        name="max_pool_nchwc", attrs=_attrs("max_pool", None))


def _pad_k(a: te.Tensor, k4: int, dtype: str = "uint8") -> te.Tensor:
    k = int(a.shape[-1])
    if k == k4 and dtype == a.dtype:
        return a
    if k == k4:
        return te.compute(a.shape, lambda *idx: a[idx].astype(dtype), name="a_widen")
    return te.compute(
        tuple(a.shape[:-1]) + (k4,),
        lambda *idx: tirx.if_then_else(
            idx[-1] < k, a[idx[:-1] + (tirx.min(idx[-1], k - 1),)].astype(dtype),
            tirx.const(0, dtype)),
        name="a_pad_k")


def _slice_n(acc: te.Tensor, n: int | None) -> te.Tensor:
    if n is None or n == int(acc.shape[-1]):
        return acc
    return te.compute(tuple(acc.shape[:-1]) + (n,), lambda *idx: acc[idx], name="slice_n")


def dense_packed(a: te.Tensor, w: te.Tensor, intrin: str = "", n: int | None = None
                 ) -> te.Tensor:
    """u8 `[..., K]` x packed `[N/L, K4/4, *block]` -> s32 `[..., N]` (`n` real output
    columns; the kernel computes whole blocks of L and a slice stage drops the padding)."""
    info = intrinsics.by_name(intrin)
    nb, kq = int(w.shape[0]), int(w.shape[1])
    assert tuple(int(x) for x in w.shape[2:]) == info.block_shape, w.shape
    ap = _pad_k(a, kq * 4, info.act_dtype)
    lanes = info.lanes
    r_kq = te.reduce_axis((0, kq), "kq")
    r_k4 = te.reduce_axis((0, 4), "k4")
    lead = tuple(a.shape[:-1])

    def body(*idx):
        j = idx[-1]
        return te.sum(
            _i32(ap[idx[:-1] + (r_kq * 4 + r_k4,)])
            * _i32(w[(j // lanes, r_kq) + info.block_index(j % lanes, r_k4)]),
            axis=[r_kq, r_k4])

    acc = te.compute(lead + (nb * lanes,), body, name="dense_int8",
                     attrs=_attrs("dense", info))
    return _slice_n(acc, n)


def pack_rhs(b: te.Tensor, intrin: str = "", transpose_b: bool = False) -> te.Tensor:
    """Run-time packing of an s8 activation `[..., K, N]` (`[..., N, K]` when `transpose_b`)
    into `[..., N/L, K4/4, *block]` (s16 for the widened intrinsic), zero-padding N and K."""
    info = intrinsics.by_name(intrin)
    bd = tuple(b.shape[:-2])
    nd = len(bd)
    if transpose_b:
        n, k = int(b.shape[-2]), int(b.shape[-1])
    else:
        k, n = int(b.shape[-2]), int(b.shape[-1])
    lanes = info.lanes
    nb, kq = -(-n // lanes), -(-k // 4)

    def fetch(bidx, nn, kk):
        inb = tirx.all(nn < n, kk < k)
        nn, kk = tirx.min(nn, n - 1), tirx.min(kk, k - 1)
        idx = bidx + ((nn, kk) if transpose_b else (kk, nn))
        return tirx.if_then_else(inb, b[idx], tirx.const(0, b.dtype))

    if info.variant == "widen":
        shape = bd + (nb, kq, 2, lanes, 2)

        def fn(*idx):
            j, q, par, ln, pr = idx[nd:]
            return fetch(idx[:nd], j * lanes + ln, q * 4 + pr * 2 + par)
    elif info.variant == "widen16":
        shape = bd + (nb, kq, 2, lanes, 2)

        def fn(*idx):
            j, q, pr, ln, par = idx[nd:]
            return fetch(idx[:nd], j * lanes + ln, q * 4 + pr * 2 + par)
    else:
        shape = bd + (nb, kq, lanes, 4)

        def fn(*idx):
            j, q, ln, kk = idx[nd:]
            return fetch(idx[:nd], j * lanes + ln, q * 4 + kk)
    return te.compute(shape, lambda *idx: fn(*idx).astype(info.weight_dtype), name="pack_rhs")


def batch_matmul_packed(a: te.Tensor, bp: te.Tensor, intrin: str = "", n: int | None = None
                        ) -> te.Tensor:
    """u8 `[..., M, K]` x packed `[..., N/L, K4/4, *block]` -> s32 `[..., M, N]`; `bp`'s
    batch dims equal `a`'s, or are absent (one right-hand side for every batch)."""
    info = intrinsics.by_name(intrin)
    nblk = len(info.block_shape)
    nb, kq = int(bp.shape[-2 - nblk]), int(bp.shape[-1 - nblk])
    bd = tuple(a.shape[:-2])
    bbd = len(bp.shape) - 2 - nblk
    assert bbd in (0, len(bd)), (a.shape, bp.shape)
    m = a.shape[-2]
    ap = _pad_k(a, kq * 4, info.act_dtype)
    lanes = info.lanes
    r_kq = te.reduce_axis((0, kq), "kq")
    r_k4 = te.reduce_axis((0, 4), "k4")

    def body(*idx):
        bi, i, j = idx[:-2], idx[-2], idx[-1]
        bsel = bi if bbd else ()
        return te.sum(
            _i32(ap[bi + (i, r_kq * 4 + r_k4)])
            * _i32(bp[bsel + (j // lanes, r_kq) + info.block_index(j % lanes, r_k4)]),
            axis=[r_kq, r_k4])

    acc = te.compute(bd + (m, nb * lanes), body, name="batch_matmul_int8",
                     attrs=_attrs("batch_matmul", info))
    return _slice_n(acc, n)


def batch_matmul(a: te.Tensor, b: te.Tensor, intrin: str = "", transpose_b: bool = False
                 ) -> te.Tensor:
    """Activation x activation: pack `b` at run time, then `batch_matmul_packed` (one
    PrimFunc, the packing is its prologue)."""
    n = int(b.shape[-2] if transpose_b else b.shape[-1])
    return batch_matmul_packed(a, pack_rhs(b, intrin, transpose_b), intrin, n=n)
