"""x86 int8 kernels: every template x every target code path, bit-exact against numpy.

Code paths: `vpdpbusd.512` (avx512-vnni), `vpdpbusd.256` (avx2-vnni), and for the
`vpmaddubsw` targets (avx512, avx2, sse4.2) the exact widened variant and the saturating
fast variant (dispatched only for weights proven not to saturate). Paths whose CPU flags
this machine lacks are cross-compiled: LLVM must verify them and their object code must
hold the expected instructions; their numerics tests are skipped with the missing flags
named. Integer results must be bit-exact; requantized results too (the kernels perform the
reference's f32 operations one by one, and the quantized add fences its products against
FMA contraction) -- the only tolerated difference is the documented 1 LSB of an *unfenced*
residual add written with plain Relax ops, where LLVM contracts `x * a + y * b` into an FMA.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from qcompile import codegen, reference, targets
from qcompile.relay_passes import x86_int8_dispatch as disp
from qcompile.schedules.x86.lower import lower
from qcompile.schedules.x86 import compute, intrinsics, packing, schedule

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

TARGETS = targets.all_targets()
# (target, variant): every code path of the x86 int8 kernels
PATHS = [(t, v) for t in ("avx2", "sse4.2", "avx512") for v in ("widen", "widen16", "fast")]
PATHS += [("avx512-vnni", "vnni"), ("avx2-vnni", "vnni")]
RNG = np.random.default_rng(20261122)

# instructions that must appear in each path's object code
ASM_EXPECT = {
    ("avx512-vnni", "vnni"): [("vpdpbusd", "zmm")],
    ("avx2-vnni", "vnni"): [("vpdpbusd", "ymm")],
    ("avx512", "widen"): [("vpmaddwd", "zmm")],
    ("avx512", "widen16"): [("vpmaddwd", "zmm")],
    ("avx512", "fast"): [("vpmaddubsw", "zmm"), ("vpmaddwd", "zmm")],
    ("avx2", "widen"): [("vpmaddwd", "ymm")],
    ("avx2", "widen16"): [("vpmaddwd", "ymm")],
    ("avx2", "fast"): [("vpmaddubsw", "ymm"), ("vpmaddwd", "ymm")],
    ("sse4.2", "widen"): [("pmaddwd", "xmm")],
    ("sse4.2", "widen16"): [("pmaddwd", "xmm")],
    ("sse4.2", "fast"): [("pmaddubsw", "xmm"), ("pmaddwd", "xmm")],
}


def skip_unless_runnable(spec):
    if not spec.runnable_here():
        pytest.skip(f"numerics of target {spec.name!r} not run here: this CPU lacks "
                    f"{', '.join(spec.missing_flags()) or 'an x86-64 ISA'} "
                    "(cross-compiled and checked at the object-code level instead)")


# ------------------------------------------------------------------ numpy reference
# qcompile.reference is the one numpy reference: conv2d (through conftest.conv_ref, padded
# with the zero point), requantize(acc, mult, axis, out_zp, dtype, lo, hi) and
# qadd(a, b, a_zp, a_mult, b_zp, b_mult, out_zp, dtype, lo, hi)
from conftest import conv_ref  # noqa: E402  (qcompile.reference.conv2d, zero-point padded)


# ------------------------------------------------------------------ graph builders
def emit_requant(bb, acc, bias, mult, zp, lo=0, hi=255, dtype="uint8", cshape=(1, -1, 1, 1)):
    y = acc
    if bias is not None:
        y = bb.emit(relax.op.add(acc, relax.const(bias.reshape(cshape))))
    f = bb.emit(relax.op.astype(y, "float32"))
    f = bb.emit(relax.op.multiply(f, relax.const(mult.astype(np.float32).reshape(cshape))))
    f = bb.emit(relax.op.round(f))
    f = bb.emit(relax.op.add(f, relax.const(np.float32(zp))))
    f = bb.emit(relax.op.clip(f, lo, hi))
    return bb.emit(relax.op.astype(f, dtype))


def weights(shape, variant, extremes=True):
    """s8 weights for a code path: full range with -128/-127/127 extremes, or 7-bit-safe
    pairs for the saturating fast path (|w| <= 64 puts every pair sum within s16)."""
    if variant == "fast":
        w = RNG.integers(-64, 65, shape)
        if extremes:
            w.flat[0:4] = [64, 64, -64, -64]
    else:
        w = RNG.integers(-128, 128, shape)
        if extremes:
            w.flat[0:6] = [-128, -128, -127, -127, 127, 127]
    return w.astype(np.int8)


def activations(shape, zp_extreme=True):
    x = RNG.integers(0, 256, shape).astype(np.uint8)
    if zp_extreme:
        x.reshape(-1)[: max(1, x.size // 4)] = 255
    return x


def build(mod, spec, expect_variants=None, allow_fast=True, variant=None, winograd=None):
    """Dispatch + fuse + default schedules + compile. `variant` "widen"/"widen16" forces
    that exact kernel (otherwise the dispatch picks per op); a forced variant tests the
    direct templates, so Winograd is off unless `winograd` says otherwise."""
    report = []
    exact = variant if variant in ("widen", "widen16") else None
    if winograd is None:
        winograd = variant is None
    out = disp.dispatch(mod, spec, allow_saturating_fast=allow_fast, report=report,
                        exact_variant=exact, winograd=winograd)
    kernels = [r for r in report if "left_alone" not in r]
    if expect_variants is not None:
        assert kernels, report
        got = {r["variant"] for r in kernels if r["intrinsic"]}
        assert got <= set(expect_variants), (got, expect_variants, report)
    lowered = lower(out, spec, strict=True)
    ex = tvm.compile(lowered, target=spec.tvm_target())
    return ex, out, report


def run(ex, *args):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    res = vm["main"](*[tvm.runtime.tensor(a) for a in args])
    return res.numpy()


def object_code(ex) -> str:
    """The assembly of every LLVM module a (Relax VM) executable carries."""
    mods = ex.mod._collect_from_import_tree(lambda m: m.kind == "llvm")
    return "\n".join(m.inspect_source("asm") for m in mods)


def check_asm(ex, path):
    asm = object_code(ex)
    lines = asm.splitlines()
    for instr, reg in ASM_EXPECT[path]:
        hits = [ln for ln in lines if instr in ln.split("#")[0] and reg in ln]
        assert hits, f"{path}: no `{instr}` on {reg} registers in the object code"
    if path[1].startswith("widen"):
        assert not any("pmaddubsw" in ln for ln in lines), "widened path uses vpmaddubsw"
    if path == ("avx2-vnni", "vnni"):
        assert "zmm" not in asm, "AVX-VNNI code must not touch zmm registers"
        assert all("{vex}" in ln for ln in lines if "vpdpbusd" in ln), \
            "AVX-VNNI needs the VEX encoding ({vex} vpdpbusd), not EVEX (AVX512-VNNI)"


# ------------------------------------------------------------------ intrinsic level
def test_weights_fit_s16_pairs_boundaries():
    ok = intrinsics.weights_fit_s16_pairs
    assert ok(np.array([[64, 64, -64, -64]]))
    assert ok(np.array([[127, 1, -128, 0]]))
    assert not ok(np.array([[127, 2, 0, 0]]))      # 255 * 129 = 32895 > 32767
    assert not ok(np.array([[0, 0, -128, -1]]))    # 255 * -129 < -32768
    assert ok(np.array([[127, -128, 127, -128]]))  # mixed signs never add up


def test_select_follows_target_data():
    for spec in TARGETS.values():
        if spec.family != "x86":
            continue
        exact = intrinsics.select(spec.int8, weights_safe=False)
        assert exact.exact and exact.lanes == spec.int8.lanes
        assert exact.kind == spec.int8.dot_product
        fast = intrinsics.select(spec.int8, weights_safe=True)
        if spec.int8.saturation == "none":
            assert fast is exact
        else:
            assert fast.variant == "fast" and not fast.exact


def test_unpacked_weight_is_a_build_error():
    """The intrinsics declare their buffers' strides: tensorizing a window of an unpacked
    [N, K] weight (stride K, not 4) must fail to build, not compute garbage (the wheel's
    `dot_16x4_vnni` declares none and silently does the latter)."""
    from tvm import te

    info = intrinsics.get("pmaddubsw.256", "fast")
    a = te.placeholder((4, 64), "uint8", name="a")
    w = te.placeholder((16, 64), "int8", name="w")
    kq, k4 = te.reduce_axis((0, 16), "kq"), te.reduce_axis((0, 4), "k4")
    c = te.compute((4, 16), lambda i, j: te.sum(
        a[i, kq * 4 + k4].astype("int32") * w[j, kq * 4 + k4].astype("int32"),
        axis=[kq, k4]), name="c")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, w, c]))
    blk = sch.get_sblock("c")
    i, j, kq_l, k4_l = sch.get_loops(blk)
    jo, ji = sch.split(j, [None, 8])
    sch.reorder(i, jo, kq_l, ji, k4_l)
    sch.decompose_reduction(blk, kq_l)
    sch.tensorize(ji, info.name)
    with pytest.raises(Exception, match="strides"):
        tvm.compile(sch.mod, target=TARGETS["avx2"].tvm_target())


def _dense_module(m, k, n, w, epilogue=None, lead=()):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(lead + (m, k), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.matmul(x, relax.const(w), out_dtype="int32"))
            out = epilogue(bb, acc) if epilogue else acc
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("target", ["avx2", "sse4.2"])
def test_no_silent_saturation_255_x_minus128(target):
    """255 x -128/-127/127 everywhere: the widened path is exact; the same weights through
    the fast (saturating) intrinsic are not -- so the test can see saturation."""
    spec = TARGETS[target]
    skip_unless_runnable(spec)
    m, k, n = 8, 64, 2 * spec.int8.lanes
    x = np.full((m, k), 255, np.uint8)
    w = np.where(RNG.random((k, n)) < 0.5, -128, 127).astype(np.int8)
    w[:, 1] = -127
    ref = x.astype(np.int64) @ w.astype(np.int64)
    ex, _, report = build(_dense_module(m, k, n, w), spec, expect_variants={"widen"})
    np.testing.assert_array_equal(run(ex, x), ref)
    # the same kernel forced onto the saturating intrinsic must differ (saturation is real)
    fast = intrinsics.get(spec.int8.dot_product, "fast")
    got = _run_dense_direct(spec, fast, x, w)
    assert not np.array_equal(got, ref)
    # ... and at the proven-safe boundary (pair sums 255*128) the fast path is exact
    wsafe = np.tile(np.array([[127], [1], [-128], [0]], np.int8), (k // 4, n))
    assert intrinsics.weights_fit_s16_pairs(packing.dense_blocks(wsafe, fast.lanes))
    np.testing.assert_array_equal(_run_dense_direct(spec, fast, x, wsafe),
                                  x.astype(np.int64) @ wsafe.astype(np.int64))


def _run_dense_direct(spec, info, x, w):
    from tvm import te

    a = te.placeholder(x.shape, "uint8", name="a")
    packed = packing.pack_dense(w, info)
    wt = te.placeholder(packed.shape, info.weight_dtype, name="w")
    c = compute.dense_packed(a, wt, info.name, w.shape[1])
    func = te.create_prim_func([a, wt, c])
    func = schedule.default_schedule(func)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=spec.tvm_target())
    out = tvm.runtime.tensor(np.zeros((x.shape[0], w.shape[1]), np.int32))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
    return out.numpy()


# ------------------------------------------------------------------ every template x path
_CACHE: dict = {}


def _conv_case(path, winograd=False):
    """3x3, stride 1, zero point 255 padding via R.nn.pad, C not a multiple of 16,
    requantize to u8 with a ReLU clip; `winograd`: the same conv as exact Winograd
    F(2x2, 3x3) (9 x 11 outputs: odd tile rows and columns)."""
    key = ("winograd" if winograd else "conv", path)
    if key in _CACHE:
        return _CACHE[key]
    spec = TARGETS[path[0]]
    n, ic, h, wd, oc = 1, 20, 9, 11, 24
    zp = 255
    x = activations((n, ic, h, wd))
    w = weights((oc, ic, 3, 3), path[1])
    bias = RNG.integers(-20000, 20000, oc).astype(np.int32)
    mult = (RNG.random(oc) * 2e-4 + 1e-5).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(xv, (0, 0, 0, 0, 1, 1, 1, 1), pad_value=float(zp)))
            acc = bb.emit(relax.op.nn.conv2d(p, relax.const(w), out_dtype="int32"))
            out = bb.emit_output(emit_requant(bb, acc, bias, mult, 3, lo=3))
        bb.emit_func_output(out)
    ex, _, report = build(bb.get(), spec, expect_variants={path[1]},
                          variant=None if winograd else path[1], winograd=winograd)
    want = "conv2d_winograd_nchwc" if winograd else "conv2d_nchwc"
    assert [r["kernel"] for r in report] == [want], report
    acc_ref = conv_ref(x, w, padding=(1, 1, 1, 1), pad_value=zp)
    ref = reference.requantize(acc_ref + bias.reshape(1, -1, 1, 1), mult, 1, 3, np.uint8, 3, 255)
    _CACHE[key] = (spec, ex, (x,), ref)
    return _CACHE[key]


def _dense_case(path):
    """[2, 5, 36] x [36, 40] (K and N not multiples of the blocks) -> requantize to s8."""
    if ("dense", path) in _CACHE:
        return _CACHE[("dense", path)]
    spec = TARGETS[path[0]]
    m, k, n = 5, 36, 40
    x = activations((2, m, k))
    w = weights((k, n), path[1])
    bias = RNG.integers(-3000, 3000, n).astype(np.int32)
    mult = (RNG.random(n) * 1e-3).astype(np.float32)
    mod = _dense_module(m, k, n, w, lead=(2,), epilogue=lambda bb, acc: emit_requant(
        bb, acc, bias, mult, 0, lo=-128, hi=127, dtype="int8", cshape=(-1,)))
    ex, _, _ = build(mod, spec, expect_variants={path[1]}, variant=path[1])
    acc = (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32) + bias
    ref = reference.requantize(acc, mult, -1, 0, np.int8, -128, 127)
    _CACHE[("dense", path)] = (spec, ex, (x,), ref)
    return _CACHE[("dense", path)]


def _bmm_case(path):
    """Attention-style Q x K^T: u8 [2, 3, 7, 20] x s8 permute_dims([2, 3, 9, 20]) -> s32."""
    if ("bmm", path) in _CACHE:
        return _CACHE[("bmm", path)]
    spec = TARGETS[path[0]]
    a = activations((2, 3, 7, 20))
    b = RNG.integers(-128, 128, (2, 3, 9, 20)).astype(np.int8)
    b.flat[:8] = -128
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType(a.shape, "uint8"))
    bv = relax.Var("b", relax.TensorType(b.shape, "int8"))
    with bb.function("main", [av, bv]):
        with bb.dataflow():
            bt = bb.emit(relax.op.permute_dims(bv, [0, 1, 3, 2]))
            out = bb.emit_output(relax.op.matmul(av, bt, out_dtype="int32"))
        bb.emit_func_output(out)
    ex, _, _ = build(bb.get(), spec, expect_variants={path[1]}, variant=path[1])
    ref = np.einsum("bhmk,bhnk->bhmn", a.astype(np.int64), b.astype(np.int64))
    _CACHE[("bmm", path)] = (spec, ex, (a, b), ref)
    return _CACHE[("bmm", path)]


CASES = {"conv2d": _conv_case, "dense": _dense_case, "batch_matmul": _bmm_case,
         "winograd": lambda path: _conv_case(path, winograd=True)}


def _has_path(template, path) -> bool:
    """A run-time right operand (batch-matmul) is never proven safe for the saturating
    kernel; Winograd exists on the targets whose file says so, as an s16 (widen16) GEMM."""
    if template == "batch_matmul":
        return path[1] != "fast"
    if template == "winograd":
        return TARGETS[path[0]].int8.winograd != "none" and path[1] == "widen16"
    return True


# every template x code path
TEMPLATE_PATHS = [pytest.param(t, p, id=f"{t}-{p[0]}-{p[1]}") for t in sorted(CASES)
                  for p in PATHS if _has_path(t, p)]


@pytest.mark.parametrize("template,path", TEMPLATE_PATHS)
def test_template_object_code(template, path):
    """LLVM verifies the build and the object code uses the path's instructions."""
    _, ex, _, _ = CASES[template](path)
    check_asm(ex, path)


@pytest.mark.parametrize("template,path", TEMPLATE_PATHS)
def test_template_numerics(template, path):
    spec = TARGETS[path[0]]
    skip_unless_runnable(spec)
    _, ex, args, ref = CASES[template](path)
    np.testing.assert_array_equal(run(ex, *args), ref)


DW_TARGETS = ["avx2", "sse4.2", "avx512", "avx512-vnni", "avx2-vnni"]


def _bias_mult(c):
    """Per-channel s32 bias and f32 requantize multiplier of a test layer."""
    return (RNG.integers(-500, 500, c).astype(np.int32),
            (RNG.random(c) * 2e-3).astype(np.float32))


@pytest.mark.parametrize("stride,pad", [(2, 1), (1, 1), (1, 0)])
@pytest.mark.parametrize("target", DW_TARGETS)
def test_depthwise(target, stride, pad):
    """Depthwise 3x3 stride 2 / 1, C=20 (not a multiple of the lanes), zp padding 7 or none
    (then the kernel's widening stage has no padding)."""
    spec = TARGETS[target]
    c, h, wd = 20, 12, 9
    x = activations((1, c, h, wd))
    w = weights((c, 1, 3, 3), "widen")
    bias, mult = _bias_mult(c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(xv, (0, 0, 0, 0) + (pad,) * 4, pad_value=7.0)) \
                if pad else xv
            acc = bb.emit(relax.op.nn.conv2d(p, relax.const(w), strides=(stride, stride), groups=c,
                                             out_dtype="int32"))
            out = bb.emit_output(emit_requant(bb, acc, bias, mult, 9))
        bb.emit_func_output(out)
    ex, _, report = build(bb.get(), spec)
    assert [r["kernel"] for r in report] == ["depthwise_nchwc"]
    # one multiply-accumulate instruction per tap: vpdpbusd on VNNI, vpmaddwd otherwise
    dw = intrinsics.depthwise(spec.int8.dot_product)
    assert report[0]["intrinsic"] == dw.name and report[0]["exact"]
    asm = object_code(ex)
    want = "vpdpbusd" if dw.variant == "vnni" else "pmaddwd"
    assert want in asm, f"{target}: no {want} in the depthwise kernel"
    skip_unless_runnable(spec)
    acc = conv_ref(x, w, strides=(stride, stride), padding=(pad,) * 4, pad_value=7, groups=c)
    ref = reference.requantize(acc + bias.reshape(1, -1, 1, 1), mult, 1, 9, np.uint8, 0, 255)
    np.testing.assert_array_equal(run(ex, x), ref)


@pytest.mark.parametrize("target", DW_TARGETS)
@pytest.mark.parametrize("pool,stride,pad", [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)),
                                             ((3, 3), (1, 1), (1, 1)), ((2, 2), (1, 1), (2, 2))])
def test_max_pool_template(target, pool, stride, pad):
    """The NCHW[L]c max-pool template: bit-exact vs numpy for C=20 (not a multiple of the
    lanes), values 0 and 255 included, inside a region; clamped window indices where every
    window holds an image element, a pad stage with the dtype minimum where one does not
    (pad >= pool: windows entirely in the padding give 0)."""
    spec = TARGETS[target]
    c, h, wd = 20, 13, 11
    x = activations((1, c, h, wd))
    x[0, 0, 0, 0], x[0, 1, -1, -1] = 255, 0
    w = weights((c, c, 1, 1), "widen")
    bias, mult = _bias_mult(c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), out_dtype="int32"))
            q = emit_requant(bb, acc, bias, mult, 9)
            out = bb.emit_output(relax.op.nn.max_pool2d(q, pool, stride, pad))
        bb.emit_func_output(out)
    ex, mod, _ = build(bb.get(), spec)
    assert "max_pool_nchwc" in mod["main"].script()
    assert ("pool_pad" in mod.script()) == (pad[0] >= pool[0])
    skip_unless_runnable(spec)
    acc = conv_ref(x, w)
    q = reference.requantize(acc + bias.reshape(1, -1, 1, 1), mult, 1, 9, np.uint8, 0, 255)
    qp = np.pad(q, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))  # 0 = u8 minimum
    oh = (h + 2 * pad[0] - pool[0]) // stride[0] + 1
    ow = (wd + 2 * pad[1] - pool[1]) // stride[1] + 1
    ref = np.max(np.stack([qp[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
                           for i in range(pool[0]) for j in range(pool[1])]), 0)
    np.testing.assert_array_equal(run(ex, x), ref)


# ------------------------------------------------------------------ conv shapes (run here)
CONV_SHAPES = {
    # name: (ic, oc, h, w, k, stride, pad, dilation, zp, epilogue)
    "stem7x7_ic3_s2": (3, 16, 20, 18, 7, 2, 3, 1, 0, "requant_u8"),
    "1x1_s2_dequant": (16, 32, 9, 9, 1, 2, 0, 1, 0, "dequant_f32"),
    "3x3_dil2_s8": (8, 12, 11, 10, 3, 1, 2, 2, 0, "requant_s8"),
    "3x3_s2_zp255_int32": (12, 8, 7, 9, 3, 2, 1, 1, 255, "int32"),
    "1x1_c17_zp0": (17, 17, 5, 6, 1, 1, 0, 1, 0, "requant_u8"),
}


def _conv_module(x, w, bias, mult, stride, pad, dil, zp, epilogue, out_zp=4):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            data, conv_pad = xv, (pad, pad)
            if zp and pad:
                data = bb.emit(relax.op.nn.pad(xv, (0, 0, 0, 0, pad, pad, pad, pad),
                                               pad_value=float(zp)))
                conv_pad = (0, 0)
            acc = bb.emit(relax.op.nn.conv2d(data, relax.const(w), strides=(stride, stride),
                                             padding=conv_pad, dilation=(dil, dil),
                                             out_dtype="int32"))
            if epilogue == "int32":
                out = acc
            elif epilogue == "dequant_f32":
                y = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, -1, 1, 1))))
                f = bb.emit(relax.op.astype(y, "float32"))
                out = bb.emit(relax.op.multiply(f, relax.const(mult.reshape(1, -1, 1, 1))))
            elif epilogue == "requant_s8":
                out = emit_requant(bb, acc, bias, mult, -3, -128, 127, "int8")
            else:
                out = emit_requant(bb, acc, bias, mult, out_zp)
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def _conv_expected(x, w, bias, mult, stride, pad, dil, zp, epilogue, out_zp=4):
    acc = conv_ref(x, w, (stride, stride), (pad,) * 4, (dil, dil), zp)
    cs = (1, -1, 1, 1)
    if epilogue == "int32":
        return acc
    if epilogue == "dequant_f32":
        return (acc + bias.reshape(cs)).astype(np.float32) * mult.reshape(cs)
    if epilogue == "requant_s8":
        return reference.requantize(acc + bias.reshape(cs), mult, 1, -3, np.int8, -128, 127)
    return reference.requantize(acc + bias.reshape(cs), mult, 1, out_zp, np.uint8, 0, 255)


@pytest.mark.parametrize("name", sorted(CONV_SHAPES))
def test_conv_shapes_avx2(name):
    spec = TARGETS["avx2"]
    skip_unless_runnable(spec)
    ic, oc, h, wd, k, stride, pad, dil, zp, epi = CONV_SHAPES[name]
    x = activations((1, ic, h, wd))
    w = weights((oc, ic, k, k), "widen")
    bias = RNG.integers(-5000, 5000, oc).astype(np.int32)
    mult = (RNG.random(oc) * 1e-3).astype(np.float32)
    mod = _conv_module(x, w, bias, mult, stride, pad, dil, zp, epi)
    ex, _, _ = build(mod, spec, expect_variants={"widen", "widen16"})
    ref = _conv_expected(x, w, bias, mult, stride, pad, dil, zp, epi)
    np.testing.assert_array_equal(run(ex, x), ref)


def test_stem_uses_nchw4c_data():
    """A 3-channel input is padded to 4 channels (NCHW4c), not to the 8/16 lanes."""
    spec = TARGETS["avx512-vnni"]
    x = np.zeros((1, 3, 16, 16), np.uint8)
    w = weights((16, 3, 7, 7), "vnni")
    mod = _conv_module(x, w, None, None, 2, 3, 1, 0, "int32")
    out = disp.dispatch(mod, spec)
    assert 'R.Tensor((1, 1, 16, 16, 4), dtype="uint8")' in out["main"].script()
    kernel = out["qconv2d_nchwc"].script()  # weight [OC/16, IC/4, 7, 7, 4/4, 16, 4]
    assert "T.int64(1), T.int64(1), T.int64(7), T.int64(7), T.int64(1), T.int64(16), " \
        "T.int64(4)), \"int8\"" in kernel


# ------------------------------------------------------------------ regions and epilogues
def qcompile_op(name: str):
    """The `qcompile.requantize` / `qcompile.qadd` op: from qcompile/ops.py when it exists,
    else a stand-in with only type inference (registered at priority 1, so the real
    registration, if imported later in the process, overrides it)."""
    try:
        import qcompile.ops  # noqa: F401  (registers the real ops)
    except ImportError:
        pass
    try:
        return tvm.ir.Op.get(name)
    except Exception:  # noqa: BLE001
        def infer(call, ctx):
            return relax.TensorType(call.args[0].ty.shape, str(call.attrs["out_dtype"]))

        tvm.ir._ffi_api.RegisterOpAttr(name, "FInferType", infer, 1)
        tvm.ir._ffi_api.RegisterOpAttr(name, "FPurity", True, 1)
        return tvm.ir.Op.get(name)


def _block_graph(x, w1, w2, b1, m1, b2, m2, custom_ops: bool):
    """conv3x3 -> requant -> conv1x1 -> requant -> residual add (with the first output)
    -> max-pool: one NCHW[L]c region, transformed only at its entry and exit. With
    `custom_ops` the requantizes and the add are `qcompile.requantize` / `qcompile.qadd`."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))

    def requant(acc, bias, mult, zp, lo):
        if not custom_ops:
            return emit_requant(bb, acc, bias, mult, zp, lo=lo)
        y = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, -1, 1, 1))))
        attrs = tvm.ir.make_node("ir.DictAttrs", axis=1, out_zp=zp, out_dtype="uint8",
                                 clip_min=lo, clip_max=255)
        return bb.emit(relax.Call(qcompile_op("qcompile.requantize"), [y, relax.const(mult)],
                                  attrs))

    with bb.function("main", [xv]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(xv, (0, 0, 0, 0, 1, 1, 1, 1), pad_value=2.0))
            a1 = bb.emit(relax.op.nn.conv2d(p, relax.const(w1), out_dtype="int32"))
            q1 = requant(a1, b1, m1, 2, 2)
            a2 = bb.emit(relax.op.nn.conv2d(q1, relax.const(w2), out_dtype="int32"))
            q2 = requant(a2, b2, m2, 6, 0)
            if custom_ops:
                attrs = tvm.ir.make_node("ir.DictAttrs", a_zp=6, a_mult=0.75, b_zp=2,
                                         b_mult=0.5, out_zp=1, out_dtype="uint8", clip_min=1,
                                         clip_max=255)
                s = bb.emit(relax.Call(qcompile_op("qcompile.qadd"), [q2, q1], attrs))
            else:  # the same math in plain Relax ops (LLVM may contract it into an FMA)
                fa = bb.emit(relax.op.astype(relax.op.subtract(
                    relax.op.astype(q2, "int32"), relax.const(np.int32(6))), "float32"))
                fb = bb.emit(relax.op.astype(relax.op.subtract(
                    relax.op.astype(q1, "int32"), relax.const(np.int32(2))), "float32"))
                t = bb.emit(relax.op.add(relax.op.multiply(fa, relax.const(np.float32(0.75))),
                                         relax.op.multiply(fb, relax.const(np.float32(0.5)))))
                t = bb.emit(relax.op.add(relax.op.round(t), relax.const(np.float32(1))))
                s = bb.emit(relax.op.astype(relax.op.clip(t, 1, 255), "uint8"))
            mp = bb.emit(relax.op.nn.max_pool2d(s, (2, 2), (2, 2)))
            out = bb.emit_output(mp)
        bb.emit_func_output(out)
    return bb.get()


def _block_expected(x, w1, w2, b1, m1, b2, m2):
    cs = (1, -1, 1, 1)
    q1 = reference.requantize(conv_ref(x, w1, padding=(1,) * 4, pad_value=2) + b1.reshape(cs),
                              m1, 1, 2, np.uint8, 2, 255)
    q2 = reference.requantize(conv_ref(q1, w2) + b2.reshape(cs), m2, 1, 6, np.uint8, 0, 255)
    s = reference.qadd(q2, q1, 6, 0.75, 2, 0.5, 1, np.uint8, 1, 255)
    n, c, h, w = s.shape
    return s.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


@pytest.mark.parametrize("custom_ops", [True, False], ids=["qcompile-ops", "relax-ops"])
def test_region_residual_maxpool(custom_ops):
    spec = TARGETS["avx2"]
    c = 12
    x = activations((1, c, 8, 10))
    w1 = weights((c, c, 3, 3), "widen")
    w2 = weights((c, c, 1, 1), "widen")
    b1, b2 = (RNG.integers(-4000, 4000, c).astype(np.int32) for _ in range(2))
    m1, m2 = ((RNG.random(c) * 2e-3).astype(np.float32) for _ in range(2))
    mod = _block_graph(x, w1, w2, b1, m1, b2, m2, custom_ops)
    out = disp.dispatch(mod, spec)
    text = out["main"].script()
    assert text.count("to_nchwc") == 1 and text.count("from_nchwc") == 1, text
    assert "max_pool_nchwc" in text  # the max-pool stays in the region (its own template)
    skip_unless_runnable(spec)
    ex = tvm.compile(lower(out, spec, strict=True), target=spec.tvm_target())
    got = run(ex, x)
    ref = _block_expected(x, w1, w2, b1, m1, b2, m2)
    if custom_ops:  # requantize expanded, qadd fenced: bit-exact
        np.testing.assert_array_equal(got, ref)
    else:
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def _host_x86_spec():
    """The best x86 target this CPU runs (derived from the host, never assumed)."""
    for name in ("avx512-vnni", "avx512", "avx2-vnni", "avx2", "sse4.2"):
        if TARGETS[name].runnable_here():
            return TARGETS[name]
    pytest.skip("this CPU runs none of the x86 targets")


@pytest.mark.parametrize("requantized_first", [True, False], ids=["rq-first", "rq-second"])
def test_requantized_qadd_epilogue(requantized_first):
    """conv -> requantize -> qadd(., residual): the requantize used only by the add is folded
    into it (`region_ops.requantized_qadd`: clip(round(acc * m), lo - zp, hi - zp) * a_mult,
    no offset / cvt round trip / offset), with the requantized value as either operand, and
    the result is bit-exact to the two ops of the reference. Multipliers that are powers of
    two make rounding ties frequent; clip bounds narrower than the dtype are exercised."""
    spec = _host_x86_spec()
    c = 32
    x = activations((1, c, 6, 7))
    res = activations((1, c, 6, 7))
    w = weights((c, c, 1, 1), "widen")
    bias = RNG.integers(-3000, 3000, c).astype(np.int32)
    mult = (2.0 ** -RNG.integers(6, 10, c)).astype(np.float32)
    rq_zp, lo, hi = 7, 3, 250
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    rv = relax.Var("r", relax.TensorType(res.shape, "uint8"))
    with bb.function("main", [xv, rv]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), out_dtype="int32"))
            y = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, -1, 1, 1))))
            attrs = tvm.ir.make_node("ir.DictAttrs", axis=1, out_zp=rq_zp, out_dtype="uint8",
                                     clip_min=lo, clip_max=hi)
            q = bb.emit(relax.Call(qcompile_op("qcompile.requantize"), [y, relax.const(mult)],
                                   attrs))
            if requantized_first:
                args, zps, mults = [q, rv], (rq_zp, 5), (0.5, 0.25)
            else:
                args, zps, mults = [rv, q], (5, rq_zp), (0.25, 0.5)
            attrs = tvm.ir.make_node("ir.DictAttrs", a_zp=zps[0], a_mult=mults[0],
                                     b_zp=zps[1], b_mult=mults[1], out_zp=9,
                                     out_dtype="uint8", clip_min=2, clip_max=254)
            s = bb.emit_output(relax.Call(qcompile_op("qcompile.qadd"), args, attrs))
        bb.emit_func_output(s)
    out = disp.dispatch(bb.get(), spec)
    text = out["main"].script()
    # the requantize's offset and clip are gone: qadd takes the rounded f32 value
    assert text.count("R.maximum") == 0 and text.count("R.round") == 1, text
    assert "R.call_tir(qadd, (lv" in text and 'dtype="float32") = R.round' in text, text
    ex = tvm.compile(lower(out, spec, strict=True), target=spec.tvm_target())
    got = run(ex, x, res)
    qv = reference.requantize(conv_ref(x, w) + bias.reshape(1, -1, 1, 1), mult, 1, rq_zp,
                              np.uint8, lo, hi)
    a, b = (qv, res) if requantized_first else (res, qv)
    ref = reference.qadd(a, b, zps[0], mults[0], zps[1], mults[1], 9, np.uint8, 2, 254)
    np.testing.assert_array_equal(got, ref)
    assert (qv == lo).any() and (qv == hi).any(), "the clip bounds were not exercised"


def _silu_split_concat_graph(x, w1, b1, s1, w2, qs, qzp):
    """conv -> bias -> dequantize (per-channel) -> x * sigmoid(x) -> quantize -> split at
    16 channels -> concat (parts swapped) -> conv: YOLOv8's C2f pattern."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    c = w1.shape[0]
    with bb.function("main", [xv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w1), out_dtype="int32"))
            a = bb.emit(relax.op.add(a, relax.const(b1.reshape(1, -1, 1, 1))))
            d = bb.emit(relax.op.dequantize(a, relax.const(s1), relax.const(np.zeros(c, "int32")),
                                            axis=1, out_dtype="float32"))
            g = bb.emit(relax.op.multiply(d, relax.op.sigmoid(d)))
            q = bb.emit(relax.op.quantize(g, relax.const(np.float32(qs)),
                                          relax.const(np.uint8(qzp)), axis=0,
                                          out_dtype="uint8"))
            sp = bb.emit(relax.op.split(q, [16], axis=1))
            cat = bb.emit(relax.op.concat([bb.emit(relax.TupleGetItem(sp, 1)),
                                           bb.emit(relax.TupleGetItem(sp, 0))], axis=1))
            out = bb.emit_output(relax.op.nn.conv2d(cat, relax.const(w2), out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get()


def _dispatched_vs_plain(mod, spec, *inputs):
    """(dispatched main's script, its outputs, the outputs of `mod` built without the
    dispatch), both through qcompile's CPU pipeline (`codegen.fuse` / `compile_fused`: the
    same legalizations, vector sigmoid included). `spec` must run here (`_host_x86_spec`)."""
    from qcompile.schedules import dispatch_for

    target = spec.tvm_target()
    out, default = dispatch_for(mod, spec)
    text = out["main"].script()
    got = run(codegen.compile_fused(codegen.fuse(out, target), target,
                                    default_schedule=default), *inputs)
    ref = run(codegen.compile_fused(codegen.fuse(mod, target), target), *inputs)
    return text, got, ref


def test_silu_split_concat_stay_in_the_region():
    """The f32 SiLU between a conv's dequantize and the next quantize, and a channel
    split / concat at block multiples, run in NCHW[L]c (one `to_nchwc` at the entry, one
    `from_nchwc` at the exit), bit-identical to the same graph without the dispatch (TVM's
    legalization of quantize / dequantize, qcompile's vector sigmoid in both)."""
    spec = _host_x86_spec()
    c = 48
    x = activations((1, c, 5, 6))
    w1 = weights((c, c, 1, 1), "widen")
    w2 = weights((c, c, 1, 1), "widen")
    b1 = RNG.integers(-3000, 3000, c).astype(np.int32)
    s1 = (RNG.random(c) * 2e-3 + 1e-4).astype(np.float32)
    mod = _silu_split_concat_graph(x, w1, b1, s1, w2, 0.05, 128)
    text, got, ref = _dispatched_vs_plain(mod, spec, x)
    assert text.count("to_nchwc") == 1 and text.count("from_nchwc") == 1, text
    assert "R.dequantize" not in text and "R.quantize" not in text, text
    np.testing.assert_array_equal(got, ref)
    # and against numpy (its sigmoid is not qcompile's within 3 ulp: a u8 value may move by
    # one step at a rounding tie, and every accumulator using it with it)
    acc = conv_ref(x, w1) + b1.reshape(1, -1, 1, 1)
    d = (acc.astype(np.float32) * s1.reshape(1, -1, 1, 1)).astype(np.float32)
    g = d * (1 / (1 + np.exp(-d.astype(np.float64)))).astype(np.float32)
    q = np.clip(np.round(g / np.float32(0.05)) + 128, 0, 255).astype(np.uint8)
    exp = conv_ref(np.concatenate([q[:, 16:], q[:, :16]], 1), w2)
    assert np.mean(got == exp) > 0.9, np.mean(got == exp)


@pytest.mark.parametrize("size, rounding", [((10, 24), "floor"), ((15, 18), "floor"),
                                            ((10, 12), "round_prefer_ceil")],
                         ids=["2x4x-floor", "3x-floor", "2x-round"])
def test_gate_and_resize_stay_in_the_region(size, rounding):
    """A per-channel computed gate ([1, C, 1, 1], squeeze-excite / DBNet's HardSigmoid
    attention) multiplied into a region value, then a nearest resize and the quantize:
    all in NCHW[L]c, the quantize moved before the resize (which then moves u8 values),
    bit-identical to the graph without the dispatch. Upsampling by powers of two with
    floor rounding is `region_ops.upsample_nearest` (integer indices), other resizes TOPI's
    in the blocked layout."""
    spec = _host_x86_spec()
    c = 24  # not a multiple of the block: the padded lanes ride along
    x = activations((1, c, 5, 6))
    gate = RNG.random((1, c, 1, 1)).astype(np.float32)
    w1 = weights((c, c, 3, 3), "widen")
    w2 = weights((c, c, 1, 1), "widen")
    s1 = (RNG.random(c) * 2e-3 + 1e-4).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    gv = relax.Var("g", relax.TensorType(gate.shape, "float32"))
    with bb.function("main", [xv, gv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w1), padding=(1, 1),
                                           out_dtype="int32"))
            d = bb.emit(relax.op.dequantize(a, relax.const(s1), relax.const(np.int32(0)),
                                            axis=1, out_dtype="float32"))
            g = bb.emit(relax.op.multiply(d, relax.op.clip(gv, 0, 1)))
            r = bb.emit(relax.op.image.resize2d(g, size, roi=[0.0] * 4,
                                                method="nearest_neighbor",
                                                coordinate_transformation_mode="asymmetric",
                                                rounding_method=rounding))
            q = bb.emit(relax.op.quantize(r, relax.const(np.float32(0.04)),
                                          relax.const(np.uint8(100)), axis=0,
                                          out_dtype="uint8"), name_hint="q")
            out = bb.emit_output(relax.op.nn.conv2d(q, relax.const(w2), out_dtype="int32"))
        bb.emit_func_output(out)
    text, got, ref = _dispatched_vs_plain(bb.get(), spec, x, gate)
    # entries: x and the gate; one exit
    assert text.count("to_nchwc") == 2 and text.count("from_nchwc") == 1, text
    if size == (10, 24):
        assert "upsample_nearest" in text and "resize2d" not in text, text
        assert re.search(r"R\.call_tir\(upsample_nearest\d*, \(q_lowres", text), text
    else:
        assert f'layout="NCHW{spec.int8.lanes}c"' in text, text
        assert 'dtype="uint8") = R.image.resize2d(q_lowres' in text, text
    np.testing.assert_array_equal(got, ref)


def _requantize_call(x, mult, zp, lo=0, hi=255):
    attrs = tvm.ir.make_node("ir.DictAttrs", axis=1, out_zp=zp, out_dtype="uint8",
                             clip_min=lo, clip_max=hi)
    return relax.Call(qcompile_op("qcompile.requantize"), [x, relax.const(mult)], attrs)


def test_global_average_pool_stays_in_the_region():
    """conv -> requantize -> the integer global average pool (`sum(int32(q))` over H, W,
    minus H*W*zp, requantized) -> a 1x1 conv on [1, C, 1, 1] (a squeeze-excite branch): the
    pool is `region_ops.spatial_sum` in NCHW[L]c with the cast inside it (no `from_nchwc`
    of the s32 map), bit-exact against numpy and against the build without the dispatch."""
    spec = _host_x86_spec()
    c, h, w = 24, 9, 11
    x = activations((1, c, h, w))
    w1 = weights((c, c, 3, 3), "widen")
    w2 = weights((c, c, 1, 1), "widen")
    b1 = RNG.integers(-3000, 3000, c).astype(np.int32)
    m1 = (RNG.random(c) * 2e-3 + 1e-4).astype(np.float32)
    zp, m2 = 7, np.float32(1.0 / (h * w * 3))
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w1), padding=(1, 1),
                                           out_dtype="int32"))
            a = bb.emit(relax.op.add(a, relax.const(b1.reshape(1, -1, 1, 1))))
            q = bb.emit(_requantize_call(a, m1, zp))
            s = bb.emit(relax.op.sum(relax.op.astype(q, "int32"), axis=[2, 3], keepdims=True))
            s = bb.emit(relax.op.add(s, relax.const(np.int32(-h * w * zp))))
            g = bb.emit(_requantize_call(s, np.full(c, m2, np.float32), 128))
            out = bb.emit_output(relax.op.nn.conv2d(g, relax.const(w2), out_dtype="int32"))
        bb.emit_func_output(out)
    text, got, ref = _dispatched_vs_plain(bb.get(), spec, x)
    assert text.count("to_nchwc") == 1 and text.count("from_nchwc") == 1, text
    assert "spatial_sum" in text and "R.sum" not in text, text
    np.testing.assert_array_equal(got, ref)
    qv = reference.requantize(conv_ref(x, w1, padding=(1,) * 4) + b1.reshape(1, -1, 1, 1),
                              m1, 1, zp, np.uint8, 0, 255)
    pooled = qv.astype(np.int32).sum(axis=(2, 3), keepdims=True) - h * w * zp
    gq = reference.requantize(pooled, np.full(c, m2, np.float32), 1, 128, np.uint8, 0, 255)
    np.testing.assert_array_equal(got, conv_ref(gq, w2))


def test_gate_conv_epilogue_over_the_feature_map():
    """A squeeze-excite gate: the 1x1 conv on the pooled [1, C, 1, 1] value, whose fused
    epilogue (dequantize, HardSigmoid, the multiply into the [1, C, H, W] map, quantize)
    is far larger than the conv's output: it gets a parallel loop of its own over the map
    (`schedule._place_epilogue`), with the same values as the graph without the dispatch."""
    from qcompile.schedules import dispatch_for

    spec = _host_x86_spec()
    c, h, w = 24, 12, 10
    x = activations((1, c, h, w))
    w1 = weights((c, c, 1, 1), "widen")
    wg = weights((c, c, 1, 1), "widen")
    s1 = (RNG.random(c) * 2e-3 + 1e-4).astype(np.float32)
    sg = (RNG.random(c) * 1e-3 + 1e-4).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w1), out_dtype="int32"))
            d = bb.emit(relax.op.dequantize(a, relax.const(s1), relax.const(np.int32(0)),
                                            axis=1, out_dtype="float32"))
            q = bb.emit(_requantize_call(a, s1 * 50, 128))
            p = bb.emit(relax.op.sum(relax.op.astype(q, "int32"), axis=[2, 3], keepdims=True))
            p = bb.emit(_requantize_call(bb.emit(relax.op.add(
                p, relax.const(np.int32(-h * w * 128)))), np.full(c, 1 / (h * w), np.float32),
                128))
            g = bb.emit(relax.op.nn.conv2d(p, relax.const(wg), out_dtype="int32"))
            g = bb.emit(relax.op.dequantize(g, relax.const(sg), relax.const(np.int32(0)),
                                            axis=1, out_dtype="float32"))
            g = bb.emit(relax.op.clip(relax.op.add(relax.op.multiply(
                g, relax.const(np.float32(0.2))), relax.const(np.float32(0.5))), 0, 1))
            y = bb.emit(relax.op.multiply(d, g))
            out = bb.emit_output(relax.op.quantize(y, relax.const(np.float32(0.05)),
                                                   relax.const(np.uint8(128)), axis=0,
                                                   out_dtype="uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    text, got, ref = _dispatched_vs_plain(mod, spec, x)
    assert text.count("to_nchwc") == 1 and text.count("from_nchwc") == 1, text
    np.testing.assert_array_equal(got, ref)
    out, default = dispatch_for(mod, spec)
    fused = default(codegen.fuse(out, spec.tvm_target()), spec.tvm_target())
    gate = [f.script() for gv, f in fused.functions.items()
            if "qconv2d" in gv.name_hint and "multiply" in gv.name_hint]
    # the map's loop nest: parallel over channel blocks x rows, not inside the conv's chunks
    assert gate and f"T.parallel(T.int64({-(-c // spec.int8.lanes) * h}))" in gate[0], gate


def _conv_transpose_graph(x, w, scale, bias, bn, qs, w2, kh=2, kw=2):
    """A ConvTranspose (stride == kernel) as the frontend imports it after the low-precision
    passes: 1x1 int8 conv to O*kh*kw channels (CRD: channel o*kh*kw + i*kw + j), its
    per-channel dequantize, the depth-to-space (reshape, permute, reshape), then a bias,
    an unfolded batch norm, ReLU, quantize and the next 1x1 conv (DBNet's head)."""
    n, _, h, wd = x.shape
    o = w.shape[0] // (kh * kw)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), out_dtype="int32"))
            d = bb.emit(relax.op.dequantize(a, relax.const(scale),
                                            relax.const(np.zeros(scale.size, np.int32)),
                                            axis=1, out_dtype="float32"))
            r = bb.emit(relax.op.reshape(d, (n, o, kh, kw, h, wd)))
            t = bb.emit(relax.op.permute_dims(r, [0, 1, 4, 2, 5, 3]))
            z = bb.emit(relax.op.reshape(t, (n, o, h * kh, wd * kw)))
            z = bb.emit(relax.op.add(z, relax.const(bias.reshape(1, -1, 1, 1))))
            bnt = bb.emit(relax.op.nn.batch_norm(z, *(relax.const(v) for v in bn), axis=1,
                                                 training=False))
            y = bb.emit(relax.op.nn.relu(bb.emit(relax.TupleGetItem(bnt, 0))))
            q = bb.emit(relax.op.quantize(y, relax.const(np.float32(qs)),
                                          relax.const(np.uint8(0)), axis=0, out_dtype="uint8"))
            out = bb.emit_output(relax.op.nn.conv2d(q, relax.const(w2), out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get()


def test_conv_transpose_depth_to_space_stays_in_the_region():
    """DBNet's ConvTranspose head: the conv's channels are reordered to DCR and the bias,
    batch norm, ReLU and quantize move before the depth-to-space
    (`relay_passes/depth_to_space.py`), which then copies whole u8 blocks in NCHW[L]c
    (`region_ops.depth_to_space`): one region from the input to the output, the same
    values as the graph built without the dispatch."""
    from qcompile.relay_passes.depth_to_space import reorder_depth_to_space

    spec = _host_x86_spec()
    c, o, h, w = 16, 16, 5, 7
    x = activations((1, c, h, w))
    wt = weights((o * 4, c, 1, 1), "widen")
    scale = np.repeat((RNG.random(o) * 2e-3 + 1e-4).astype(np.float32), 4)
    bias = (RNG.random(o) - 0.5).astype(np.float32)
    bn = [(RNG.random(o) + 0.5).astype(np.float32), (RNG.random(o) - 0.5).astype(np.float32),
          (RNG.random(o) - 0.5).astype(np.float32), (RNG.random(o) + 0.1).astype(np.float32)]
    w2 = weights((8, o, 1, 1), "widen")
    mod = _conv_transpose_graph(x, wt, scale, bias, bn, 0.02, w2)
    moved = reorder_depth_to_space(mod, spec.int8.lanes)["main"].script()
    assert "R.nn.batch_norm" not in moved and "axes=[0, 3, 4, 1, 5, 2]" in moved, moved
    text, got, ref = _dispatched_vs_plain(mod, spec, x)
    assert text.count("to_nchwc") == 1 and text.count("from_nchwc") == 1, text
    assert "depth_to_space" in text and "R.permute_dims" not in text, text
    np.testing.assert_array_equal(got, ref)
    # O not a multiple of the block: left as it was (its depth-to-space leaves the region)
    odd = _conv_transpose_graph(x, wt[:12], scale[:12], bias[:3], [v[:3] for v in bn], 0.02,
                                w2[:, :3])
    tvm.ir.assert_structural_equal(reorder_depth_to_space(odd, spec.int8.lanes), odd)


def test_dense_dequant_and_relu_clip():
    """Dense with bias + dequantize to f32 (exact: one f32 multiply), and a ReLU-clip."""
    spec = TARGETS["avx2"]
    skip_unless_runnable(spec)
    m, k, n = 16, 64, 24
    x = activations((m, k))
    w = weights((k, n), "widen")
    bias = RNG.integers(-2000, 2000, n).astype(np.int32)
    scale = (RNG.random(n) * 1e-2).astype(np.float32)

    def epi(bb, acc):
        y = bb.emit(relax.op.add(acc, relax.const(bias)))
        f = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), relax.const(scale)))
        return bb.emit(relax.op.clip(f, 0.0, 6.0))

    ex, _, _ = build(_dense_module(m, k, n, w, epi), spec, expect_variants={"widen"})
    acc = (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32) + bias
    ref = np.clip(acc.astype(np.float32) * scale, 0, 6)
    np.testing.assert_array_equal(run(ex, x), ref)


def test_fast_variant_dispatched_only_for_safe_weights():
    spec = TARGETS["avx2"]
    safe = weights((64, 16), "fast")
    unsafe = safe.copy()
    unsafe[0, 0], unsafe[1, 0] = 127, 2
    for w, want in ((safe, "fast"), (unsafe, "widen")):
        report = []
        disp.dispatch(_dense_module(4, 64, 16, w), spec, report=report)
        assert report[0]["variant"] == want, report
    report = []
    disp.dispatch(_dense_module(4, 64, 16, safe), spec, allow_saturating_fast=False,
                  report=report)
    assert report[0]["variant"] == "widen"


def test_epilogue_is_inside_the_parallel_kernel():
    """After fusion + default schedule, one PrimFunc holds the conv and its requantize, and
    the epilogue's store happens under the kernel's parallel loop, vectorized."""
    spec = TARGETS["avx2"]
    x = np.zeros((1, 16, 8, 8), np.uint8)
    w = weights((16, 16, 3, 3), "widen")
    mod = _conv_module(x, w, np.zeros(16, np.int32), np.ones(16, np.float32) * 1e-3, 1, 1, 1,
                       0, "requant_u8")
    lowered = lower(disp.dispatch(mod, spec), spec, strict=True)
    fused = [f for gv, f in lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "qconv2d" in gv.name_hint]
    assert len(fused) == 1
    text = fused[0].script()
    assert "T.parallel" in text and "T.vectorized" in text
    assert text.index("T.parallel") < text.rindex('T.Cast("uint8"')


# ------------------------------------------------------------------ MetaSchedule rule
def _conv_task(spec):
    x = activations((1, 16, 6, 6))
    w = weights((16, 16, 3, 3), "widen")
    bias = RNG.integers(-500, 500, 16).astype(np.int32)
    mult = (RNG.random(16) * 1e-3).astype(np.float32)
    mod = _conv_module(x, w, bias, mult, 1, 1, 1, 0, "requant_u8")
    unscheduled = codegen.fuse(disp.dispatch(mod, spec), spec.tvm_target())
    name = next(gv.name_hint for gv, f in unscheduled.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc) and schedule.has_qcompile_block(f))
    ref = _conv_expected(x, w, bias, mult, 1, 1, 1, 0, "requant_u8")
    return unscheduled, name, x, ref


def _with_kernel(unscheduled, name, func, spec):
    mod = unscheduled.clone()
    mod.update_func(mod.get_global_var(name), func.with_attr("tir.is_scheduled", True)
                    .without_attr("global_symbol"))
    return tvm.compile(lower(mod, spec, strict=True), target=spec.tvm_target())


def test_metaschedule_rule_samples_and_replays():
    """The registered rule (`s_tir.meta_schedule.cpu.<rule>`, what `ApplyCustomRule` calls
    for the block's `schedule_rule` annotation) samples tile knobs; its traces replay
    exactly (as MetaSchedule's database does), and every sample is exact."""
    from tvm.s_tir import Trace

    spec = TARGETS["avx2"]
    schedule.register_rules()
    unscheduled, name, x, ref = _conv_task(spec)
    task = tvm.IRModule({"main": unscheduled[name]})
    rule = tvm.get_global_func(f"s_tir.meta_schedule.cpu.{compute.RULES['conv2d']}")
    results = set()
    for seed in (1, 2, 3):
        sch = tvm.s_tir.Schedule(task, seed=seed)
        block = schedule.find_main_block(sch)[0]
        (sch,) = rule(sch, block)
        trace = sch.trace
        assert "sample_perfect_tile" in str(trace) and "tensorize" in str(trace)
        replay = tvm.s_tir.Schedule(task)
        Trace.apply_to_schedule(trace, replay, remove_postproc=False)
        tvm.ir.assert_structural_equal(replay.mod, sch.mod)
        results.add(str(trace))
        if spec.runnable_here():
            ex = _with_kernel(unscheduled, name, sch.mod["main"], spec)
            np.testing.assert_array_equal(run(ex, x), ref)
    assert len(results) > 1, "the rule samples no knobs"


@pytest.mark.slow
def test_metaschedule_tuning_end_to_end(tmp_path):
    """A 2-trial MetaSchedule run on a fused conv + requantize builds, runs and is exact.
    Slow mostly because TVM's `TuneContext` and builder import every TVMScript tensor
    intrinsic of the wheel (10-40 s each, depending on load)."""
    from tvm.s_tir import meta_schedule as ms

    from qcompile.tuning.tuner import prepare_metaschedule_logging

    spec = TARGETS["avx2"]
    skip_unless_runnable(spec)
    unscheduled, name, x, ref = _conv_task(spec)
    task = unscheduled[name]
    target = spec.tvm_target()
    prepare_metaschedule_logging()
    db = ms.tir_integration.tune_tir(
        task, target, str(tmp_path), max_trials_global=2, num_trials_per_iter=2, seed=1,
        # replay the rule's traces with fresh samples (scripts/bench_kernels.py runs the
        # default evolutionary search with the XGBoost model)
        strategy=ms.search_strategy.ReplayTrace(), cost_model="random",
        # generous timeouts: the shared CI machine is often loaded
        builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300),
        runner=ms.runner.LocalRunner(timeout_sec=120))
    sch = ms.tir_integration.compile_tir(db, task, target)
    assert sch is not None, "tuning produced no valid schedule"
    assert "tensorize" in str(sch.trace)
    ex = _with_kernel(unscheduled, name, sch.mod["main"], spec)
    np.testing.assert_array_equal(run(ex, x), ref)


# ------------------------------------------------------------------ property test
if given is not None:
    @settings(max_examples=4, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(ic=st.integers(1, 20), oc=st.integers(1, 20), hw=st.integers(3, 9),
           k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
           zp=st.sampled_from([0, 255]))
    def test_conv_property_avx2(ic, oc, hw, k, stride, zp):
        spec = TARGETS["avx2"]
        if not spec.runnable_here():
            pytest.skip(f"avx2 numerics not run here: CPU lacks {spec.missing_flags()}")
        pad = k // 2
        x = activations((1, ic, hw, hw + 1))
        w = weights((oc, ic, k, k), "widen", extremes=oc * ic * k * k >= 6)
        mod = _conv_module(x, w, None, None, stride, pad, 1, zp, "int32")
        ex, _, _ = build(mod, spec)
        ref = conv_ref(x, w, (stride, stride), (pad,) * 4, (1, 1), zp)
        np.testing.assert_array_equal(run(ex, x), ref)
