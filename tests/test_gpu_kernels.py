"""OpenCL int8 kernel templates: bit-exact against numpy on a real OpenCL device (PoCL here).

Every template (conv2d with DOT4, depthwise conv2d, dense with DOT4, batch-matmul with DOT4,
each with its fused epilogue) is built from integer-IR Relax ops through the same path as
`qcompile build --target intel-gpu` (dispatch -> fusion -> template schedule -> lowering ->
OpenCL artifact) and run through the pyopencl runner, on both int8 dot-product paths:

* ``fallback``: the `char4` helper (forced with -DQCOMPILE_NO_DOT_PRODUCT);
* ``dot``: the `cl_khr_integer_dot_product` branch. PoCL has no such extension, so the test
  defines the extension macro and a spec-conforming `dot(uchar4, char4)` in front of the
  source; a deliberately wrong `dot()` then changes the results, which proves that branch is
  the one that ran. On an Intel GPU driver the real `dot()` runs without any of this.

Skipped (with the reason) only when no OpenCL device / pyopencl is available.
"""
from __future__ import annotations


import numpy as np
import pytest

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from qcompile import reference, targets  # noqa: E402
from qcompile.artifact import read_meta  # noqa: E402
from conftest import conv_ref, require_opencl  # noqa: E402


# the dot() shim below makes PoCL warn about an unknown extension pragma
pytestmark = pytest.mark.filterwarnings("ignore:Non-empty compiler output")

SPEC = targets.resolve("intel-gpu")
RNG = np.random.default_rng(20261122)
# emulates cl_khr_integer_dot_product on a device without it (see module doc)
DOT_SHIM = """#define cl_khr_integer_dot_product 1
int __attribute__((overloadable)) dot(uchar4 a, char4 b) {
  return (int)a.x * b.x + (int)a.y * b.y + (int)a.z * b.z + (int)a.w * b.w%s;
}
"""
PATHS = ["fallback", "dot"]


def run_paths(mod, feed, tmp_path, paths=PATHS, expect_template=True):
    """Build `mod` into an OpenCL artifact and run it on every dot-product path."""
    from qcompile.gpu.artifact import build_relax
    from qcompile.gpu.runtime import OpenCLModel

    require_opencl()
    report: list = []
    out = build_relax(mod, SPEC, tmp_path / "art", report=report)
    meta = read_meta(out)
    if expect_template:
        assert report and all("kernel" in r for r in report), report
        kinds = set(meta["opencl"]["schedules"].values())
        assert "int8 template" in kinds, meta["opencl"]["schedules"]
        assert meta["fallbacks"] == [], meta["fallbacks"]   # no template fell back
    results = {}
    for path in paths:
        if path == "fallback":
            m = OpenCLModel(out, meta, force_fallback=True)
        else:
            m = OpenCLModel(out, meta, source_prefix=DOT_SHIM % "")
        results[path] = m(feed)["output"]
    return results, meta, out


# ------------------------------------------------------------------ numpy reference
# requantize: `qcompile.reference.requantize` (integer-ir.md: clip(round_half_even(f32(acc)
# * mult) + zp, lo, hi)), per output channel: axis 1 for NCHW convs, -1 for matmuls


def _epilogue(bb, acc, bias, mult, zp, lo, hi):
    """bias add + requantize written with plain Relax ops (as the legalized op computes)."""
    x = bb.emit(relax.op.add(acc, relax.const(bias)))
    f = bb.emit(relax.op.astype(x, "float32"))
    f = bb.emit(relax.op.multiply(f, relax.const(mult)))
    f = bb.emit(relax.op.round(f))
    f = bb.emit(relax.op.add(f, relax.const(np.float32(zp))))
    f = bb.emit(relax.op.clip(f, lo, hi))
    return bb.emit(relax.op.astype(f, "uint8"))


def _conv_module(shape, w, strides, dilation, conv_pad, zp_pad, zp, epilogue, groups=1,
                 bias=None, mult=None, lo=0, hi=255):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            src = xv
            if zp_pad is not None:
                t, l, b, r = zp_pad
                src = bb.emit(relax.op.nn.pad(xv, [0, 0, 0, 0, t, b, l, r],
                                              pad_value=float(zp)))
            acc = bb.emit(relax.op.nn.conv2d(src, relax.const(w), strides=strides,
                                             padding=conv_pad, dilation=dilation,
                                             groups=groups, out_dtype="int32"))
            out = _epilogue(bb, acc, bias, mult, 7, lo, hi) if epilogue else acc
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


CONV_CASES = [
    # (N, C, H, W, OC, K, stride, dilation, zp-pad (t,l,b,r) or None, conv pad, epilogue)
    (1, 6, 9, 9, 8, 3, 1, 1, (1, 1, 1, 1), (0, 0, 0, 0), True),     # C % 4 != 0, zp pad
    (1, 16, 12, 10, 24, 3, 2, 1, (1, 1, 1, 1), (0, 0, 0, 0), True),  # stride 2, H != W
    (2, 8, 8, 8, 12, 3, 1, 2, None, (2, 2, 2, 2), False),           # batch 2, dilation, pad 0
    (1, 5, 7, 7, 4, 1, 1, 1, None, (0, 0, 0, 0), True),             # 1x1
    (1, 8, 10, 10, 8, 3, 2, 1, (0, 0, 1, 1), (0, 0, 0, 0), True),   # asymmetric (TF-style)
    (1, 3, 17, 17, 16, 7, 2, 1, (3, 3, 3, 3), (0, 0, 0, 0), True),  # 7x7 stem, C = 3
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_conv2d_int8_bit_exact(case, tmp_path):
    n, c, h, w_, oc, k, s, d, zp_pad, conv_pad, epi = case
    zp = 11
    x = RNG.integers(0, 256, (n, c, h, w_)).astype(np.uint8)
    w = RNG.integers(-127, 128, (oc, c, k, k)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, (1, oc, 1, 1)).astype(np.int32)
    mult = (RNG.random((1, oc, 1, 1)) * 2e-4 + 1e-5).astype(np.float32)
    mod = _conv_module(x.shape, w, (s, s), (d, d), conv_pad, zp_pad, zp, epi, bias=bias,
                       mult=mult, lo=7, hi=200)
    pad = zp_pad if zp_pad is not None else conv_pad
    acc = conv_ref(x, w, (s, s), pad, (d, d), zp if zp_pad is not None else 0)
    want = reference.requantize(acc + bias, mult, 1, 7, np.uint8, 7, 200) if epi else acc
    got, meta, _ = run_paths(mod, {"x": x}, tmp_path)
    for path, arr in got.items():
        assert arr.dtype == want.dtype and arr.shape == want.shape, path
        np.testing.assert_array_equal(arr, want, err_msg=f"path {path}")
    assert meta["opencl"]["int8_dot_product_calls"] > 0


@pytest.mark.parametrize("k,s,pad", [(3, 1, (1, 1, 1, 1)), (3, 2, (0, 0, 1, 1)),
                                     (5, 1, (2, 2, 2, 2))])
def test_depthwise_int8_bit_exact(k, s, pad, tmp_path):
    c, h = 12, 11
    zp = 5
    x = RNG.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    w = RNG.integers(-127, 128, (c, 1, k, k)).astype(np.int8)
    bias = RNG.integers(-500, 500, (1, c, 1, 1)).astype(np.int32)
    mult = (RNG.random((1, c, 1, 1)) * 1e-3).astype(np.float32)
    mod = _conv_module(x.shape, w, (s, s), (1, 1), (0, 0, 0, 0), pad, zp, True, groups=c,
                       bias=bias, mult=mult)
    acc = conv_ref(x, w, (s, s), pad, (1, 1), zp, groups=c)
    want = reference.requantize(acc + bias, mult, 1, 7, np.uint8, 0, 255)
    got, _, _ = run_paths(mod, {"x": x}, tmp_path, paths=["fallback"])
    np.testing.assert_array_equal(got["fallback"], want)


def _matmul_module(ashape, b, const: bool, transposed: bool, epilogue=None):
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType(ashape, "uint8"))
    params = [av]
    if not const:
        bshape = b.shape if not transposed else b.shape[:-2] + (b.shape[-1], b.shape[-2])
        bv = relax.Var("b", relax.TensorType(bshape, "int8"))
        params.append(bv)
    with bb.function("main", params):
        with bb.dataflow():
            if const:
                rhs = relax.const(b)
            elif transposed:
                nd = b.ndim
                rhs = bb.emit(relax.op.permute_dims(bv, list(range(nd - 2)) + [nd - 1, nd - 2]))
            else:
                rhs = bv
            acc = bb.emit(relax.op.matmul(av, rhs, out_dtype="int32"))
            out = _epilogue(bb, acc, *epilogue) if epilogue else acc
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("m,k,n", [(5, 7, 9), (1, 2048, 40), (16, 64, 32), (3, 12, 6)])
def test_dense_int8_bit_exact(m, k, n, tmp_path):
    a = RNG.integers(0, 256, (m, k)).astype(np.uint8)
    w = RNG.integers(-127, 128, (k, n)).astype(np.int8)
    bias = RNG.integers(-9000, 9000, (n,)).astype(np.int32)
    mult = (RNG.random((n,)) * 1e-4).astype(np.float32)
    mod = _matmul_module(a.shape, w, True, False, (bias, mult, 3, 0, 255))
    acc = (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32)
    want = reference.requantize(acc + bias, mult, -1, 3, np.uint8, 0, 255)
    got, _, _ = run_paths(mod, {"a": a}, tmp_path)
    for path, arr in got.items():
        np.testing.assert_array_equal(arr, want, err_msg=f"path {path}")


def test_dense_int8_3d_input_fuses_its_epilogue(tmp_path):
    a = RNG.integers(0, 256, (2, 6, 20)).astype(np.uint8)
    w = RNG.integers(-127, 128, (20, 12)).astype(np.int8)
    bias = RNG.integers(-900, 900, (12,)).astype(np.int32)
    mult = (RNG.random((12,)) * 1e-3).astype(np.float32)
    got, meta, _ = run_paths(_matmul_module(a.shape, w, True, False, (bias, mult, 3, 0, 255)),
                             {"a": a}, tmp_path, paths=["fallback"])
    acc = np.matmul(a.astype(np.int64), w.astype(np.int64)).astype(np.int32)
    np.testing.assert_array_equal(got["fallback"],
                                  reference.requantize(acc + bias, mult, -1, 3, np.uint8, 0, 255))
    assert meta["opencl"]["calls"] == 1, meta["opencl"]   # matmul + epilogue: one function


@pytest.mark.parametrize("bshape,transposed", [((2, 10, 6), False), ((2, 8, 6), True),
                                               ((2, 3, 13, 5), False), ((3, 16, 16), True),
                                               ((12, 6), False)])
def test_batch_matmul_int8_bit_exact(bshape, transposed, tmp_path):
    m = 7
    a = RNG.integers(0, 256, bshape[:-2] + (m, bshape[-2])).astype(np.uint8)
    b = RNG.integers(-128, 128, bshape).astype(np.int8)
    mod = _matmul_module(a.shape, b, False, transposed)
    feed = {"a": a, "b": np.ascontiguousarray(np.swapaxes(b, -1, -2)) if transposed else b}
    got, _, _ = run_paths(mod, feed, tmp_path)
    want = np.matmul(a.astype(np.int64), b.astype(np.int64))
    for path, arr in got.items():
        np.testing.assert_array_equal(arr, want, err_msg=f"path {path}")


@pytest.mark.parametrize("wval", [-128, 127])
def test_extremes_do_not_saturate(wval, tmp_path):
    """255 x -128 (and x 127) over a long reduction: s32 exact, no s16 anywhere."""
    c = 256
    x = np.full((1, c, 5, 5), 255, np.uint8)
    w = np.full((8, c, 3, 3), wval, np.int8)
    mod = _conv_module(x.shape, w, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1, 1, 1), 255, False)
    got, _, _ = run_paths(mod, {"x": x}, tmp_path)
    want = conv_ref(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 255)
    assert want.max() == 255 * wval * c * 9 or want.min() == 255 * wval * c * 9
    for path, arr in got.items():
        np.testing.assert_array_equal(arr, want, err_msg=f"path {path}")
    a = np.full((2, 4096), 255, np.uint8)
    wd = np.full((4096, 8), wval, np.int8)
    got, _, _ = run_paths(_matmul_module(a.shape, wd, True, False), {"a": a},
                          tmp_path / "dense")
    for path, arr in got.items():
        np.testing.assert_array_equal(arr, np.full((2, 8), 255 * wval * 4096, np.int32))


def test_dot_path_is_the_one_that_runs(tmp_path):
    """With the extension macro defined, the kernels call dot(): a wrong dot() changes them."""
    from qcompile.gpu.artifact import build_relax
    from qcompile.gpu.runtime import OpenCLModel

    require_opencl()
    x = RNG.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    w = RNG.integers(-127, 128, (4, 8, 1, 1)).astype(np.int8)
    mod = _conv_module(x.shape, w, (1, 1), (1, 1), (0, 0, 0, 0), None, 0, False)
    out = build_relax(mod, SPEC, tmp_path / "art")
    meta = read_meta(out)
    want = conv_ref(x, w)
    good = OpenCLModel(out, meta, source_prefix=DOT_SHIM % "")
    assert good.dot_product is False  # PoCL: no real extension; the shim stands in
    np.testing.assert_array_equal(good({"x": x})["output"], want)
    bad = OpenCLModel(out, meta, source_prefix=DOT_SHIM % " + 1")
    assert not np.array_equal(bad({"x": x})["output"], want)
    forced = OpenCLModel(out, meta, source_prefix=DOT_SHIM % " + 1", force_fallback=True)
    np.testing.assert_array_equal(forced({"x": x})["output"], want)


def test_generated_source_has_guarded_dot_and_fallback(tmp_path):
    from qcompile.gpu.artifact import build_relax

    x = np.zeros((1, 8, 6, 6), np.uint8)
    w = RNG.integers(-127, 128, (4, 8, 3, 3)).astype(np.int8)
    mod = _conv_module(x.shape, w, (1, 1), (1, 1), (1, 1, 1, 1), None, 0, False)
    out = build_relax(mod, SPEC, tmp_path / "art")
    src = (out / "kernels.cl").read_text()
    assert "#if defined(cl_khr_integer_dot_product) && !defined(QCOMPILE_NO_DOT_PRODUCT)" in src
    assert "#pragma OPENCL EXTENSION cl_khr_integer_dot_product : enable" in src
    assert "return dot(a, b);" in src
    assert "convert_int4(a) * convert_int4(b)" in src            # the char4 fallback
    assert "#pragma OPENCL FP_CONTRACT OFF" in src
    assert "qc_dot4_u8s8(vload4(" in src                           # tensorized call sites
    dot_at = src.index("return dot(a, b);")
    assert src.rindex("#if defined(cl_khr_integer_dot_product)", 0, dot_at) < dot_at


def test_integer_ir_ops_requantize_and_qadd(tmp_path):
    """qcompile.requantize / qcompile.qadd (as ops.py legalizes them) fused after a conv, vs
    qcompile.reference (the integer IR's definition)."""
    from qcompile import ops

    x = RNG.integers(0, 256, (1, 8, 7, 7)).astype(np.uint8)
    w = RNG.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)
    mult = (RNG.random(8) * 2e-4).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(xv, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=9.0))
            acc = bb.emit(relax.op.nn.conv2d(p, relax.const(w), out_dtype="int32"))
            r = bb.emit(ops.requantize(acc, relax.const(mult), axis=1, out_zp=9,
                                       out_dtype="uint8", clip_min=9, clip_max=255))
            q = bb.emit(ops.qadd(r, xv, 9, 0.75, 3, 0.5, 4, "uint8"))
            out = bb.emit_output(q)
        bb.emit_func_output(out)
    mod = bb.get()
    want = reference.run(mod, {"x": x})
    got, _, _ = run_paths(mod, {"x": x}, tmp_path, paths=["fallback"])
    np.testing.assert_array_equal(got["fallback"], np.asarray(want))


def test_quantize_entry_is_exact(tmp_path):
    """The f32 quantize at an int8 region's entry, `clip(rint(x / scale) + zp)`, on OpenCL:
    needs correctly rounded division (-cl-fp32-correctly-rounded-divide-sqrt) and the scale
    printed exactly (TVM prints f32 literals with 7 digits; lower.py emits as_float(bits))."""
    scale = np.float32(0.031381707638502121)
    x = (np.random.default_rng(7).standard_normal((1, 3, 64, 64)) * 4).astype(np.float32)
    # values sitting on rounding ties of x / scale, where one ulp decides
    x.flat[:200] = ((np.arange(200) - 100 + 0.5) * scale).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(xv, relax.const(scale), relax.const(np.int8(0)),
                                          axis=0, out_dtype="int8"))
            out = bb.emit_output(relax.op.astype(q, "int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    got, _, out_dir = run_paths(mod, {"x": x}, tmp_path, paths=["fallback"],
                                expect_template=False)
    np.testing.assert_array_equal(got["fallback"], np.asarray(reference.run(mod, [x])))
    assert "as_float(" in (out_dir / "kernels.cl").read_text()
