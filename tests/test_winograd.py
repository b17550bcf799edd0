"""Exact integer Winograd F(2x2, 3x3) (qcompile/schedules/x86/winograd.py): the transform
math in numpy, the exactness bound, and when the x86 dispatch uses it or says why not.
The compiled kernel's bit-exactness on every target is in test_kernels_x86.py (template
`winograd`)."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from qcompile import targets
from qcompile.relay_passes import x86_int8_dispatch as disp
from qcompile.schedules.x86 import winograd

RNG = np.random.default_rng(20261207)
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)


def _direct(d, g):
    """[IC, H+2, W+2] x [OC, IC, 3, 3] -> [OC, H, W] (valid correlation, int64)."""
    oc, _, _, _ = g.shape
    h, w = d.shape[1] - 2, d.shape[2] - 2
    out = np.zeros((oc, h, w), np.int64)
    for y in range(h):
        for x in range(w):
            out[:, y, x] = np.einsum("oikl,ikl->o", g, d[:, y:y + 3, x:x + 3])
    return out


def _winograd(d, g):
    """The kernel's integer pipeline in numpy: V = B^T d B, M = sum_ic U V, Y = A^T M A / 4."""
    u = winograd.transform_weights(g)
    h, w = d.shape[1] - 2, d.shape[2] - 2
    th, tw = -(-h // 2), -(-w // 2)
    dp = np.zeros((d.shape[0], 2 * th + 2, 2 * tw + 2), np.int64)
    dp[:, :h + 2, :w + 2] = d
    out = np.zeros((g.shape[0], 2 * th, 2 * tw), np.int64)
    for ty in range(th):
        for tx in range(tw):
            v = np.einsum("ak,ikl,bl->abi", _BT, dp[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4], _BT)
            assert np.abs(v).max() <= winograd.V_MAX
            m = np.einsum("aboi,abi->abo", u, v)
            y4 = np.einsum("ia,abo,jb->oij", winograd._AT, m, winograd._AT)
            assert (y4 % 4 == 0).all()  # A^T M A = 4 * conv: the division is exact
            out[:, 2 * ty:2 * ty + 2, 2 * tx:2 * tx + 2] = y4 // 4
    return out[:, :h, :w]


@pytest.mark.parametrize("hw", [(6, 6), (7, 9), (1, 2)])
def test_integer_pipeline_equals_direct_conv(hw):
    """Extremes included (255 activations, -128/127 weights); odd sizes leave a partial
    tile whose extra outputs are discarded."""
    d = RNG.integers(0, 256, (5, hw[0] + 2, hw[1] + 2))
    d[:, 0, :] = 255
    g = RNG.integers(-128, 128, (3, 5, 3, 3))
    g[0] = -128
    g[1] = 127
    np.testing.assert_array_equal(_winograd(d, g), _direct(d, g))


def test_transformed_weights_fit_s16():
    """The largest |U| (all weights -128) is 9 * 128; packing keeps every value in s16."""
    from qcompile.schedules.x86 import intrinsics

    g = np.full((1, 1, 3, 3), -128)
    assert np.abs(winograd.transform_weights(g)).max() == 9 * 128
    w = RNG.integers(-128, 128, (20, 12, 3, 3))
    w[0] = -128
    info = intrinsics.get("pmaddubsw.256", "widen16")
    packed = winograd.pack_weights(w, info, 4)
    assert packed.dtype == np.int16 and packed.shape == (4, 4, 3, 3, 1, 2, 8, 2)
    u = winograd.transform_weights(w)
    assert int(np.abs(packed).max()) == int(np.abs(u).max()) == 9 * 128
    assert int(packed.astype(np.int64).sum()) == int(u.sum())  # nothing lost to padding


def test_exact_bound():
    """The bound covers the GEMM sums and the output transform's partial sums: worst-case
    full-range weights over 512 channels exceed s32, trained-scale ones do not; the bound
    is attained by an all-255 input against the sign pattern of U."""
    worst = np.full((8, 512, 3, 3), -128)
    assert winograd.exact_bound(worst) > winograd.S32_MAX
    typical = np.clip(np.round(RNG.normal(0, 20, (8, 512, 3, 3))), -128, 127)
    assert winograd.exact_bound(typical) < winograd.S32_MAX
    g = RNG.integers(-128, 128, (2, 3, 3, 3))
    u = np.abs(winograd.transform_weights(g)).sum(axis=3)
    assert winograd.exact_bound(g) >= winograd.V_MAX * u.max()


def _conv(x_shape, w, stride=1):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x_shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(
                xv, relax.const(w.astype(np.int8)), strides=(stride, stride), padding=(1, 1),
                out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get()


def _report(mod, spec, **kw):
    report = []
    disp.dispatch(mod, spec, report=report, **kw)
    (entry,) = [r for r in report if "left_alone" not in r]
    return entry


WINO_TARGETS = [n for n, s in targets.all_targets().items() if s.int8.winograd != "none"]


@pytest.mark.parametrize("target", WINO_TARGETS)
def test_dispatch_uses_winograd_for_full_range_weights(target):
    spec = targets.all_targets()[target]
    w = RNG.integers(-128, 128, (16, 16, 3, 3))
    w.flat[:2] = [127, 127]  # a pair the saturating vpmaddubsw could not hold exactly
    entry = _report(_conv((1, 16, 12, 12), w), spec)
    assert entry["kernel"] == "conv2d_winograd_nchwc" and entry["exact"], entry
    assert entry["variant"] == "widen16"
    off = _report(_conv((1, 16, 12, 12), w), spec, winograd=False)
    assert off["kernel"] == "conv2d_nchwc" and "winograd_refused" not in off


@pytest.mark.parametrize("why,w,x_shape,stride", [
    ("saturating vpmaddubsw pair", RNG.integers(-64, 65, (256, 256, 3, 3)), (1, 256, 12, 12),
     1),
    ("output tiles <", RNG.integers(-128, 128, (16, 16, 3, 3)), (1, 16, 6, 6), 1),
    ("> 2^31-1", np.full((16, 512, 3, 3), 127), (1, 512, 12, 12), 1),
])
def test_dispatch_says_why_not(why, w, x_shape, stride):
    """A 3x3 stride-1 conv that stays on the direct kernel carries the reason in the
    report: 7-bit weights whose Winograd form would be large (the direct saturating pair
    is faster then), too few tiles, or partial sums that could leave s32."""
    spec = targets.all_targets()[WINO_TARGETS[0]]
    entry = _report(_conv(x_shape, w, stride), spec)
    assert entry["kernel"] == "conv2d_nchwc"
    assert why in entry.get("winograd_refused", ""), entry


@pytest.mark.parametrize("target", WINO_TARGETS)
def test_small_seven_bit_layers_use_winograd(target):
    """7-bit weights could use the saturating pair, but a layer with small transformed
    weights still runs faster as Winograd."""
    w = RNG.integers(-64, 65, (16, 16, 3, 3))
    assert winograd.weight_bytes(w) <= winograd.FAST_MAX_WEIGHT_BYTES
    entry = _report(_conv((1, 16, 12, 12), w), targets.all_targets()[target])
    assert entry["kernel"] == "conv2d_winograd_nchwc", entry


def test_no_winograd_on_vnni_or_strided():
    spec = targets.all_targets()["avx512-vnni"]
    assert spec.int8.winograd == "none"
    w = RNG.integers(-128, 128, (16, 16, 3, 3))
    assert _report(_conv((1, 16, 12, 12), w), spec)["kernel"] == "conv2d_nchwc"
    avx2 = targets.all_targets()["avx2"]
    entry = _report(_conv((1, 16, 12, 12), w, stride=2), avx2)
    assert entry["kernel"] == "conv2d_nchwc" and "winograd_refused" not in entry
