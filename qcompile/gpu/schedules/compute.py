"""TE computes of the OpenCL int8 ops (u8 activations x s8 weights -> s32), for `call_te`.

Graph tensors stay in the integer IR's layouts (NCHW / row-major): these computes take them
as they are and bring every 4-element reduction group together *inside* the kernel's
function, so the DOT4 intrinsic (`intrinsics`) always reads two contiguous 4-byte groups:

* conv2d: data u8 `[N, C, H, W]` -> `data_pack` u8 `[N, C4, H+pt+pb, W+pl+pr, 4]` (zero-point
  spatial padding, channels padded to C4*4, layout NCHW4c; a separate small kernel writing
  a global scratch buffer); weight packed at compile time `[OC, C4, KH, KW, 4]` s8 (extra
  channels are 0, so whatever the padded data holds there contributes nothing);
  out s32 `[N, OC, OH, OW]`, reduction (C4, KH, KW, 4).
* depthwise conv2d (groups = C): data u8 NCHW, weight `[C, KH, KW]` s8, reduction (KH, KW):
  one channel's taps are not 4 contiguous bytes, so no DOT4: one s32 multiply-add per tap.
* dense: `A[..., M, K]` u8 (K padded to K4 inside the function when K % 4 != 0) x weight
  packed `[N, K4]` s8 (the transposed constant) -> `[..., M, N]` s32, reduction (K4/4, 4).
* batch-matmul: `A[..., M, K]` u8 x `Bt[..., N, K]` s8 (the right operand transposed so K is
  contiguous: taken as is when the graph already has it transposed, else transposed by an
  in-function `b_pack` kernel) -> `[..., M, N]` s32.

Leading (batch) dims are kept as they are in the graph, so no reshape separates the op from
its epilogue and FuseOps fuses them.

The main block of each carries ``schedule_rule`` (`RULES`), which `schedule.py` registers as
MetaSchedule custom rules and applies as the default schedule.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

RULES = {
    "conv2d": "qcompile_opencl_conv2d_int8",
    "depthwise": "qcompile_opencl_depthwise_int8",
    "dense": "qcompile_opencl_dense_int8",
    "batch_matmul": "qcompile_opencl_batch_matmul_int8",
}
MAIN_BLOCKS = {"conv2d": "conv2d_int8", "depthwise": "depthwise_int8", "dense": "dense_int8",
               "batch_matmul": "batch_matmul_int8"}
PACK_ATTR = "qcompile.opencl_pack"   # marks the in-function repacking stages


def _i32(x):
    return x.astype("int32")


def _attrs(op: str) -> dict:
    return {"schedule_rule": RULES[op]}


# ---------------------------------------------------------------- compile-time packing
def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """OIHW s8 -> [OC, C4, KH, KW, 4] s8 (input channels zero-padded to a multiple of 4)."""
    oc, c, kh, kw = w.shape
    c4 = -(-c // 4)
    wp = np.zeros((oc, c4 * 4, kh, kw), np.int8)
    wp[:, :c] = w
    return np.ascontiguousarray(wp.reshape(oc, c4, 4, kh, kw).transpose(0, 1, 3, 4, 2))


def pack_depthwise_weight(w: np.ndarray) -> np.ndarray:
    """[C, 1, KH, KW] s8 -> [C, KH, KW] s8."""
    return np.ascontiguousarray(w[:, 0].astype(np.int8))


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] s8 -> [N, K4] s8 (transposed, K zero-padded to a multiple of 4)."""
    k, n = w.shape
    k4 = -(-k // 4) * 4
    wp = np.zeros((n, k4), np.int8)
    wp[:, :k] = w.T
    return np.ascontiguousarray(wp)


# ----------------------------------------------------------------------------- computes
def conv2d_int8(data: te.Tensor, weight: te.Tensor, strides=(1, 1), padding=(0, 0, 0, 0),
                dilation=(1, 1), pad_value: int = 0) -> te.Tensor:
    """u8 NCHW data x packed s8 `[OC, C4, KH, KW, 4]` -> s32 NCHW (see module doc)."""
    n, c, h, w = (int(x) for x in data.shape)
    oc, c4, kh, kw, four = (int(x) for x in weight.shape)
    assert four == 4 and c4 == -(-c // 4), (data.shape, weight.shape)
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    ph, pw = h + top + bottom, w + left + right
    pad = tirx.const(int(pad_value), "uint8")
    pack = te.compute(
        (n, c4, ph, pw, 4),
        lambda b, cb, y, x, i: tirx.if_then_else(
            tirx.all(y >= top, y < h + top, x >= left, x < w + left, cb * 4 + i < c),
            data[b, tirx.min(cb * 4 + i, c - 1), tirx.max(tirx.min(y - top, h - 1), 0),
                 tirx.max(tirx.min(x - left, w - 1), 0)],
            pad),
        name="data_pack", attrs={PACK_ATTR: 1})
    oh = (ph - (kh - 1) * dh - 1) // sh + 1
    ow = (pw - (kw - 1) * dw - 1) // sw + 1
    rc = te.reduce_axis((0, c4), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, 4), "ri")
    return te.compute(
        (n, oc, oh, ow),
        lambda b, o, y, x: te.sum(
            _i32(pack[b, rc, y * sh + ry * dh, x * sw + rx * dw, ri])
            * _i32(weight[o, rc, ry, rx, ri]), axis=[rc, ry, rx, ri]),
        name=MAIN_BLOCKS["conv2d"], attrs=_attrs("conv2d"))


def depthwise_int8(data: te.Tensor, weight: te.Tensor, strides=(1, 1), padding=(0, 0, 0, 0),
                   dilation=(1, 1), pad_value: int = 0) -> te.Tensor:
    """u8 NCHW data x s8 `[C, KH, KW]` -> s32 NCHW, groups = C."""
    n, c, h, w = (int(x) for x in data.shape)
    wc, kh, kw = (int(x) for x in weight.shape)
    assert wc == c, (data.shape, weight.shape)
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    ph, pw = h + top + bottom, w + left + right
    pad = tirx.const(int(pad_value), "uint8")
    if any((top, left, bottom, right)):
        src = te.compute(
            (n, c, ph, pw),
            lambda b, ch, y, x: tirx.if_then_else(
                tirx.all(y >= top, y < h + top, x >= left, x < w + left),
                data[b, ch, tirx.max(tirx.min(y - top, h - 1), 0),
                     tirx.max(tirx.min(x - left, w - 1), 0)], pad),
            name="data_pad")
    else:
        src = data
    oh = (ph - (kh - 1) * dh - 1) // sh + 1
    ow = (pw - (kw - 1) * dw - 1) // sw + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, x: te.sum(
            _i32(src[b, ch, y * sh + ry * dh, x * sw + rx * dw]) * _i32(weight[ch, ry, rx]),
            axis=[ry, rx]),
        name=MAIN_BLOCKS["depthwise"], attrs=_attrs("depthwise"))


def _pad_last(a: te.Tensor, k4: int, name: str) -> te.Tensor:
    k = int(a.shape[-1])
    if k == k4:
        return a
    zero = tirx.const(0, a.dtype)
    return te.compute(
        tuple(a.shape[:-1]) + (k4,),
        lambda *idx: tirx.if_then_else(idx[-1] < k, a[idx[:-1] + (tirx.min(idx[-1], k - 1),)],
                                       zero),
        name=name, attrs={PACK_ATTR: 1})


def dense_int8(a: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """u8 `[..., M, K]` x packed s8 `[N, K4]` -> s32 `[..., M, N]` (leading dims kept, so
    the epilogue after the matmul fuses without a reshape in between)."""
    *lead, k = (int(x) for x in a.shape)
    n, k4 = (int(x) for x in weight.shape)
    assert lead and k4 == -(-k // 4) * 4, (a.shape, weight.shape)
    ap = _pad_last(a, k4, "a_pack")
    ko = te.reduce_axis((0, k4 // 4), "ko")
    ki = te.reduce_axis((0, 4), "ki")
    return te.compute(
        (*lead, n),
        lambda *idx: te.sum(_i32(ap[idx[:-1] + (ko * 4 + ki,)])
                            * _i32(weight[idx[-1], ko * 4 + ki]), axis=[ko, ki]),
        name=MAIN_BLOCKS["dense"], attrs=_attrs("dense"))


def batch_matmul_int8(a: te.Tensor, b: te.Tensor, transpose_b: bool = False) -> te.Tensor:
    """u8 `[..., M, K]` x s8 `b` -> s32 `[..., M, N]` (same leading dims); `b` is
    `[..., N, K]` when `transpose_b` (K contiguous already), else `[..., K, N]` and
    transposed into `b_pack` in the function."""
    *batch, m, k = (int(x) for x in a.shape)
    k4 = -(-k // 4) * 4
    bdims = [int(x) for x in b.shape]
    assert bdims[:-2] == batch, (a.shape, b.shape)
    if transpose_b:
        n, kb = bdims[-2:]
        assert kb == k, (a.shape, b.shape)
        bt = _pad_last(b, k4, "b_pack")
    else:
        kb, n = bdims[-2:]
        assert kb == k, (a.shape, b.shape)
        zero = tirx.const(0, "int8")
        bt = te.compute(
            (*batch, n, k4),
            lambda *idx: tirx.if_then_else(
                idx[-1] < k, b[idx[:-2] + (tirx.min(idx[-1], k - 1), idx[-2])], zero),
            name="b_pack", attrs={PACK_ATTR: 1})
    ap = _pad_last(a, k4, "a_pack")
    ko = te.reduce_axis((0, k4 // 4), "ko")
    ki = te.reduce_axis((0, 4), "ki")
    return te.compute(
        (*batch, m, n),
        lambda *idx: te.sum(_i32(ap[idx[:-1] + (ko * 4 + ki,)])
                            * _i32(bt[idx[:-2] + (idx[-1], ko * 4 + ki)]), axis=[ko, ki]),
        name=MAIN_BLOCKS["batch_matmul"], attrs=_attrs("batch_matmul"))
