"""The compiled integer IR against qcompile.reference, over hypothesis-generated shapes,
scales and zero points, extremes included (u8 255 x s8 -128, zero points 0 and 255,
per-channel multipliers spanning 1e4): integer ops bit-exact, requantize / qadd within 1 LSB
(and in practice exact: every count of differing elements is asserted 0 as well).

Built as `qcompile build` builds (kernel dispatch of the target if any, fusion, schedules)
for avx2 and sse4.2, both runnable on the development machine."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

import qcompile.ops as qops
from lpt_helpers import IR, c, compile_run
from qcompile import reference
from qcompile.targets import all_targets

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
TARGETS = [t for t in ("avx2", "sse4.2") if all_targets()[t].runnable_here()]


def extreme_u8(rng, shape, mode):
    if mode == "max":
        return np.full(shape, 255, np.uint8)
    if mode == "zero":
        return np.zeros(shape, np.uint8)
    return rng.integers(0, 256, shape).astype(np.uint8)


def extreme_s8(rng, shape, mode):
    if mode == "min":
        return np.full(shape, -128, np.int8)
    if mode == "max":
        return np.full(shape, 127, np.int8)
    return rng.integers(-128, 128, shape).astype(np.int8)


def multipliers(rng, n, span):
    """Per-channel multipliers spanning `span` decades (1e-4 .. 1 for span 4)."""
    return (10.0 ** rng.uniform(-span, 0, n) * 1e-2).astype(np.float32)


def check(mod, inputs, target, lsb=0, exact_names=()):
    got = compile_run(mod, inputs, target)
    ref = reference.run(mod, inputs)
    got = got if isinstance(got, list) else [got]
    ref = list(ref) if isinstance(ref, tuple) else [ref]
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.dtype == r.dtype and g.shape == r.shape
        d = np.abs(g.astype(np.int64) - r.astype(np.int64))
        tol = 0 if i in exact_names else lsb
        assert d.max() <= tol, (i, d.max(), int((d > 0).sum()))
        assert int((d > 0).sum()) == 0, f"output {i}: {int((d > 0).sum())} elements off by 1"


conv_cases = st.fixed_dictionaries({
    "cin": st.sampled_from([1, 3, 4, 8]), "cout": st.sampled_from([1, 4, 8]),
    "hw": st.tuples(st.integers(3, 9), st.integers(3, 9)), "k": st.sampled_from([1, 3]),
    "stride": st.sampled_from([1, 2]), "dilation": st.sampled_from([1, 2]),
    "depthwise": st.booleans(), "zp": st.sampled_from([0, 255, 7, 128]),
    "x": st.sampled_from(["max", "rand", "zero"]), "w": st.sampled_from(["min", "max", "rand"]),
    "out_zp": st.sampled_from([0, 255, 100]), "span": st.sampled_from([0, 4]),
    "seed": st.integers(0, 2 ** 16),
})


def conv_ir(p):
    """pad(zp) -> conv2d(u8, s8, int32) -> + bias -> requantize(per-channel), returning the
    s32 accumulator and the u8 result."""
    rng = np.random.default_rng(p["seed"])
    cin = p["cin"]
    cout, groups = (cin, cin) if p["depthwise"] else (p["cout"], 1)
    h, w = p["hw"]
    k = p["k"]
    pad = (k // 2) * p["dilation"]
    wt = extreme_s8(rng, (cout, cin // groups, k, k), p["w"])
    bias = (-p["zp"] * wt.astype(np.int64).reshape(cout, -1).sum(1)).astype(np.int32)
    mult = multipliers(rng, cout, p["span"])
    x = extreme_u8(rng, (1, cin, h, w), p["x"])
    with IR({"x": ((1, cin, h, w), "uint8")}) as ir:
        xp = ir.emit(relax.op.nn.pad(ir.p[0], [0, 0, 0, 0, pad, pad, pad, pad],
                                     pad_value=float(p["zp"])))
        acc = ir.emit(relax.op.nn.conv2d(xp, c(wt), p["stride"], 0, p["dilation"], groups,
                                         out_dtype="int32"))
        acc = ir.emit(relax.op.add(acc, c(bias.reshape(1, -1, 1, 1))))
        r = ir.emit(qops.requantize(acc, c(mult), axis=1, out_zp=p["out_zp"],
                                    out_dtype="uint8"))
        mod = ir.out(ir.emit(relax.Tuple([acc, r])))
    return mod, [x]


@pytest.mark.parametrize("target", TARGETS)
@SETTINGS
@given(p=conv_cases)
def test_conv_requantize(target, p):
    mod, inputs = conv_ir(p)
    check(mod, inputs, target, lsb=1, exact_names=(0,))


dense_cases = st.fixed_dictionaries({
    "m": st.integers(1, 6), "k": st.sampled_from([1, 4, 31, 64]), "n": st.sampled_from([1, 5, 16]),
    "x": st.sampled_from(["max", "rand"]), "w": st.sampled_from(["min", "rand"]),
    "zp": st.sampled_from([0, 255, 131]), "span": st.sampled_from([0, 4]),
    "out_dtype": st.sampled_from(["uint8", "int8"]), "seed": st.integers(0, 2 ** 16),
})


@pytest.mark.parametrize("target", TARGETS)
@SETTINGS
@given(p=dense_cases)
def test_dense_requantize(target, p):
    rng = np.random.default_rng(p["seed"])
    wt = extreme_s8(rng, (p["k"], p["n"]), p["w"])
    comp = (-p["zp"] * wt.astype(np.int64).sum(0)).astype(np.int32)
    mult = multipliers(rng, p["n"], p["span"])
    x = extreme_u8(rng, (2, p["m"], p["k"]), p["x"])
    with IR({"x": ((2, p["m"], p["k"]), "uint8")}) as ir:
        acc = ir.emit(relax.op.matmul(ir.p[0], c(wt), out_dtype="int32"))
        acc = ir.emit(relax.op.add(acc, c(comp)))
        r = ir.emit(qops.requantize(acc, c(mult), axis=2, out_zp=3, out_dtype=p["out_dtype"]))
        mod = ir.out(ir.emit(relax.Tuple([acc, r])))
    check(mod, [x], target, lsb=1, exact_names=(0,))


@pytest.mark.parametrize("target", TARGETS)
@SETTINGS
@given(p=st.fixed_dictionaries({
    "a_zp": st.sampled_from([0, 128, 255]), "b_zp": st.sampled_from([0, 255, 3]),
    "a_mult": st.floats(1e-3, 4.0), "b_mult": st.floats(1e-3, 4.0),
    "out_zp": st.sampled_from([0, 128, 255]), "relu": st.booleans(),
    "broadcast_b": st.booleans(), "seed": st.integers(0, 2 ** 16)}))
def test_qadd(target, p):
    rng = np.random.default_rng(p["seed"])
    a = rng.integers(0, 256, (1, 4, 5, 7)).astype(np.uint8)
    b = rng.integers(0, 256, (7,) if p["broadcast_b"] else (1, 4, 5, 7)).astype(np.uint8)
    a[0, 0, 0, :] = 255
    with IR({"a": ((1, 4, 5, 7), "uint8")}) as ir:
        bb = c(b) if p["broadcast_b"] else c(b)
        r = ir.emit(qops.qadd(ir.p[0], bb, p["a_zp"], p["a_mult"], p["b_zp"], p["b_mult"],
                              p["out_zp"], "uint8", p["out_zp"] if p["relu"] else 0, 255))
        mod = ir.out(r)
    check(mod, [a], target, lsb=1)


def test_ties_round_to_even_in_requantize_and_qadd():
    """x.5 products round half to even exactly as the reference does (no FMA, no bias)."""
    acc = np.arange(-20, 21, dtype=np.int32).reshape(1, 1, 1, -1)
    with IR({"acc": (acc.shape, "int32")}) as ir:
        r = ir.emit(qops.requantize(ir.p[0], c(np.float32(0.5)), out_zp=128, out_dtype="uint8"))
        mod = ir.out(r)
    got = compile_run(mod, [acc], TARGETS[0])
    np.testing.assert_array_equal(got, reference.run(mod, [acc]))
    np.testing.assert_array_equal(got.reshape(-1)[17:24:2].astype(int) - 128,
                                  [-2, 0, 0, 2])  # -1.5, -.5, .5, 1.5
    a = np.arange(0, 16, dtype=np.uint8).reshape(1, 1, 4, 4)
    with IR({"a": (a.shape, "uint8")}) as ir:
        mod = ir.out(ir.emit(qops.qadd(ir.p[0], ir.p[0], 0, 0.25, 0, 0.25, 0, "uint8")))
    np.testing.assert_array_equal(compile_run(mod, [a, ], TARGETS[0]), reference.run(mod, [a]))



@pytest.mark.parametrize("zp,lo,hi,dtype", [(128, 0, 255, "uint8"), (3, 3, 255, "uint8"),
                                            (0, -128, 127, "int8"), (-5, -100, 60, "int8")])
def test_lrint_output_stage_matches_round_then_clip(zp, lo, hi, dtype):
    """`ops.offset_clip_cast(..., lrint=True)` (clip, then `vcvtps2dq`, then the offset: the
    x86 region epilogues) equals `clip(round_half_even(v) + zp, lo, hi)` bit for bit: ties,
    values just inside and outside the clip bounds, and values beyond int32 (where `lrint`
    alone would be undefined), vectorized, on every x86 target this CPU runs."""
    import tvm
    from tvm import te

    from qcompile.tvm_compat import vectorize_nearbyint

    vectorize_nearbyint()
    ties = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    edges = np.array([lo - zp, hi - zp], np.float32)
    near = np.concatenate([np.nextafter(edges, np.float32(-1e9)), np.nextafter(edges, np.float32(1e9)),
                           edges - np.float32(0.5), edges + np.float32(0.5)])
    huge = np.array([3e9, -3e9, 1e30, -1e30, 2.0 ** 31, -2.0 ** 31, 0.0, -0.0], np.float32)
    v = np.concatenate([ties, near, huge]).astype(np.float32)
    v = np.resize(v, (-(-v.size // 64) * 64,)).astype(np.float32)
    want = np.clip(np.round(v) + np.float32(zp), lo, hi).astype(dtype)
    x = te.placeholder(v.shape, "float32", "x")
    prm = [te.placeholder((1,), "float32", n) for n in ("zp", "lo", "hi")]
    y = te.compute(v.shape, lambda i: qops.offset_clip_cast(
        x[i], *(qops.scalar(t) for t in prm), dtype, lrint=True), name="y")
    func = te.create_prim_func([x, *prm, y])
    ran = 0
    for name, spec in sorted(all_targets().items()):
        if spec.family != "x86" or not spec.runnable_here():
            continue
        sch = tvm.s_tir.Schedule(func)
        outer, inner = sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])
        sch.vectorize(inner)
        lib = tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"),
                             target=spec.tvm_target(1))
        bufs = [tvm.runtime.tensor(a) for a in (v, np.float32([zp]), np.float32([lo]),
                                                np.float32([hi]), np.zeros(v.shape, dtype))]
        lib["main"](*bufs)
        np.testing.assert_array_equal(bufs[-1].numpy(), want, err_msg=name)
        assert "cvtps2dq" in lib.inspect_source("asm"), name
        ran += 1
    assert ran >= 1

# ------------------------------------------------------------------------- FakeQuantize
def _fq_cases():
    rng = np.random.default_rng(0)
    cases = []
    for levels in (256, 255, 16):
        il, ih = np.float32(-1.0), np.float32(1.0)
        k = np.arange(levels - 1)
        ties = (il + (k + 0.5) / (levels - 1) * (ih - il)).astype(np.float32)
        cases.append((f"ties{levels}", ties.reshape(1, -1), il, ih, il, ih, levels))
        edges = np.array([il, ih, np.nextafter(il, np.float32(-2)), np.nextafter(ih, np.float32(2)),
                          np.nextafter(il, np.float32(2)), np.nextafter(ih, np.float32(-2)), 0.0],
                         np.float32)
        cases.append((f"edges{levels}", edges.reshape(1, -1), il, ih, il, ih, levels))
        cases.append((f"il>ih{levels}", rng.uniform(-2, 2, (1, 64)).astype(np.float32),
                      ih, il, np.float32(0), np.float32(3), levels))
    unit = np.float32(1.0)
    grid = (np.arange(0, 510) / 2).astype(np.float32)          # exact .5 ties at scale 1
    cases.append(("exact-ties", grid.reshape(1, -1), np.float32(0), np.float32(255),
                  np.float32(0), np.float32(255), 256))
    lo = -rng.uniform(0.1, 3, (3, 1)).astype(np.float32)
    hi = rng.uniform(0.1, 3, (3, 1)).astype(np.float32)
    cases.append(("per-channel", rng.uniform(-3, 3, (3, 40)).astype(np.float32), lo, hi,
                  lo * 2, hi * 2, 256))
    del unit
    return cases


def _openvino_reference(x, il, ih, ol, oh, levels):
    """OpenVINO's reference FakeQuantize (`Node.evaluate`, what its constant folding runs)."""
    import openvino as ov
    p = ov.opset1.parameter(x.shape, ov.Type.f32)
    k = [ov.opset1.constant(np.asarray(v, np.float32)) for v in (il, ih, ol, oh)]
    node = ov.opset1.fake_quantize(p, *k, levels)
    out = ov.Tensor(ov.Type.f32, x.shape)
    assert node.evaluate([out], [ov.Tensor(np.ascontiguousarray(x))] +
                         [ov.Tensor(np.asarray(v, np.float32).reshape(np.shape(v)))
                          for v in (il, ih, ol, oh)])
    return out.data.copy()


@pytest.mark.parametrize("case", _fq_cases(), ids=lambda c_: c_[0])
def test_fake_quantize_matches_openvino_reference(case):
    _, x, il, ih, ol, oh, levels = case
    ref = reference.fake_quantize(x, il, ih, ol, oh, levels)
    np.testing.assert_array_equal(ref, _openvino_reference(x, il, ih, ol, oh, levels))
    with IR({"x": (x.shape, "float32")}) as ir:
        mod = ir.out(ir.emit(qops.fake_quantize(ir.p[0], c(il, "float32"), c(ih, "float32"),
                                                c(ol, "float32"), c(oh, "float32"), levels)))
    np.testing.assert_array_equal(compile_run(mod, [x], TARGETS[0]), ref)


# ------------------------------------------------------- through the passes from QDQ floats
@pytest.mark.parametrize("target", TARGETS[:1])
@SETTINGS
@given(p=st.fixed_dictionaries({
    "cin": st.sampled_from([2, 5]), "cout": st.sampled_from([3, 8]), "k": st.sampled_from([1, 3]),
    "zx": st.sampled_from([0, 255, 77]), "zy": st.sampled_from([0, 255, 128]),
    "wspan": st.sampled_from([0, 4]), "relu": st.booleans(), "x": st.sampled_from(["rand", "max"]),
    "w": st.sampled_from(["rand", "min"]), "seed": st.integers(0, 2 ** 16)}))
def test_pipeline_conv_agrees_with_the_qdq_graph(target, p):
    """A QDQ conv (per-channel weight scales spanning 1e4) through the five passes: the
    compiled result equals the reference of the passes' IR bit for bit, and is within 1 LSB of
    the QDQ graph computed in float (the model's own semantics)."""
    from lpt_helpers import ctx, dq, q
    from qcompile.relay_passes import pipeline as lp

    rng = np.random.default_rng(p["seed"])
    cin, cout, k = p["cin"], p["cout"], p["k"]
    wq = extreme_s8(rng, (cout, cin, k, k), p["w"]).clip(-127, 127).astype(np.int8)
    sw = (10.0 ** rng.uniform(-p["wspan"], 0, cout) * 1e-2).astype(np.float32)
    sx = np.float32(rng.uniform(0.005, 0.05))
    bias = (rng.standard_normal(cout) * 0.3).astype(np.float32)
    acc_max = float(np.abs(wq.astype(np.float64)).reshape(cout, -1).sum(1).max()) * 255 * sx
    sy = np.float32(max(float(sw.max()) * acc_max / 255 / 8, 1e-6))
    with IR({"x": ((1, cin, 6, 6), "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], sx, np.uint8(p["zx"])))
        wd = ir.emit(dq(c(wq), sw, np.zeros(cout, np.int8), "int8", axis=0))
        y = ir.emit(relax.op.nn.conv2d(xd, wd, padding=(k // 2,) * 4), "conv")
        y = ir.emit(relax.op.add(y, c(bias.reshape(1, -1, 1, 1))), "conv_bias")
        if p["relu"]:
            y = ir.emit(relax.op.nn.relu(y), "relu")
        before = ir.out(ir.emit(q(y, sy, np.uint8(p["zy"])), "q"))
    after = lp.run(before, ctx(strict=True))
    assert "qcompile.requantize" in [getattr(b.value.op, "name", "") for blk in
                                     after["main"].body.blocks for b in blk.bindings
                                     if isinstance(b.value, relax.Call)]
    x = extreme_u8(rng, (1, cin, 6, 6), p["x"])
    got = compile_run(after, [x], target)
    np.testing.assert_array_equal(got, reference.run(after, [x]))
    qdq = reference.run(before, [x]).astype(np.int64)
    assert np.abs(got.astype(np.int64) - qdq).max() <= 1
