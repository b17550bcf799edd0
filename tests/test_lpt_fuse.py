"""Pass 4 (fuse_requantize): dequantize + quantize -> requantize; qadd; concat.

Besides the IR, each case checks that the integer result stays within 1 LSB of the float
graph it replaces (quantize(float ops(dequantize(...)))) on random data."""
import numpy as np
import tvm
from tvm import relax

import qcompile.ops as qops
from lpt_helpers import IR, c, ctx, dq, names, ops_of, q
from qcompile import reference
from qcompile.relay_passes.fuse_requantize import FuseRequantize

RNG = np.random.default_rng(1)


def run(before):
    return FuseRequantize(ctx())(before)


def within_one_lsb(before, after, inputs):
    a = reference.run(before, inputs).astype(np.int64)
    b = reference.run(after, inputs).astype(np.int64)
    assert np.abs(a - b).max() <= 1
    return a, b


SACC = np.linspace(1e-4, 3e-4, 4).astype(np.float32)
ACC = {"acc": ((1, 4, 6, 6), "int32")}


def acc_data():
    return [RNG.integers(-40000, 40000, (1, 4, 6, 6)).astype(np.int32)]


def test_requantize_with_relu_as_clip():
    with IR(ACC) as ir:
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        r = ir.emit(relax.op.nn.relu(y), "relu")
        before = ir.out(ir.emit(q(r, np.float32(0.05), np.uint8(20)), "q"))
    after = run(before)
    mult = (SACC.astype(np.float64) / np.float64(np.float32(0.05))).astype(np.float32)
    with IR(ACC) as ir:
        expected = ir.out(ir.emit(qops.requantize(ir.p[0], c(mult), axis=1, out_zp=20,
                                                  out_dtype="uint8", clip_min=20,
                                                  clip_max=255)))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[0] == "q"
    within_one_lsb(before, after, acc_data())


def test_clip_and_max_pool_and_reshape_in_the_chain():
    with IR(ACC) as ir:
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        r = ir.emit(relax.op.clip(y, relax.prim_value(0.0), relax.prim_value(6.0)), "relu6")
        m = ir.emit(relax.op.nn.max_pool2d(r, (2, 2), (2, 2)), "pool")
        f = ir.emit(relax.op.reshape(m, (1, 36)), "flat")
        before = ir.out(ir.emit(q(f, np.float32(0.01), np.uint8(0)), "q"))
    after = run(before)
    assert ops_of(after) == ["qcompile.requantize", "relax.nn.max_pool2d", "relax.reshape"]
    rq = after["main"].body.blocks[0].bindings[0].value
    assert qops.attr(rq, "clip_max") == 255 and qops.attr(rq, "clip_min") == 0
    with IR(ACC) as ir:   # 6.0 / 0.05 = 120 < 255: the clip bound is 120
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        r = ir.emit(relax.op.clip(y, relax.prim_value(0.0), relax.prim_value(6.0)), "relu6")
        before2 = ir.out(ir.emit(q(r, np.float32(0.05), np.uint8(0)), "q"))
    rq = run(before2)["main"].body.blocks[0].bindings[0].value
    assert qops.attr(rq, "clip_max") == 120
    within_one_lsb(before, after, acc_data())
    within_one_lsb(before2, run(before2), acc_data())


def test_same_parameters_is_the_identity():
    with IR({"x": ((1, 4, 6, 6), "uint8")}) as ir:
        y = ir.emit(dq(ir.p[0], np.float32(0.1), np.uint8(3)))
        m = ir.emit(relax.op.nn.relu(y), "relu")
        before = ir.out(ir.emit(q(m, np.float32(0.1), np.uint8(3)), "q"))
    after = run(before)
    with IR({"x": ((1, 4, 6, 6), "uint8")}) as ir:
        expected = ir.out(ir.emit(relax.op.clip(ir.p[0], relax.prim_value(3),
                                                relax.prim_value(255))))
    tvm.ir.assert_structural_equal(after, expected)


def test_quantized_add_with_relu():
    sh = {"a": ((1, 4, 3, 3), "uint8"), "b": ((1, 4, 3, 3), "uint8")}
    with IR(sh) as ir:
        da = ir.emit(dq(ir.p[0], np.float32(0.02), np.uint8(128)))
        db = ir.emit(dq(ir.p[1], np.float32(0.05), np.uint8(7)))
        s = ir.emit(relax.op.add(da, db), "add")
        r = ir.emit(relax.op.nn.relu(s), "relu")
        before = ir.out(ir.emit(q(r, np.float32(0.04), np.uint8(0)), "q"))
    after = run(before)
    with IR(sh) as ir:
        expected = ir.out(ir.emit(qops.qadd(ir.p[0], ir.p[1], 128, 0.5, 7,
                                            np.float64(np.float32(0.05)) /
                                            np.float64(np.float32(0.04)), 0, "uint8", 0, 255)))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[0] == "add"          # the add's node name
    a = RNG.integers(0, 256, (1, 4, 3, 3)).astype(np.uint8)
    b = RNG.integers(0, 256, (1, 4, 3, 3)).astype(np.uint8)
    within_one_lsb(before, after, [a, b])


def test_concat_requantizes_inputs_to_the_output_parameters():
    sh = {"a": ((1, 2, 3, 3), "uint8"), "b": ((1, 3, 3, 3), "uint8")}
    with IR(sh) as ir:
        da = ir.emit(dq(ir.p[0], np.float32(0.02), np.uint8(10)))
        db = ir.emit(dq(ir.p[1], np.float32(0.04), np.uint8(0)))
        cat = ir.emit(relax.op.concat([da, db], axis=1), "cat")
        before = ir.out(ir.emit(q(cat, np.float32(0.04), np.uint8(0)), "q"))
    after = run(before)
    assert ops_of(after) == ["relax.astype", "relax.subtract", "qcompile.requantize",
                             "relax.concat"]          # b already has the output's parameters
    a = RNG.integers(0, 256, (1, 2, 3, 3)).astype(np.uint8)
    b = RNG.integers(0, 256, (1, 3, 3, 3)).astype(np.uint8)
    within_one_lsb(before, after, [a, b])


def test_per_channel_output_with_relu6_bounds_per_channel():
    sy = np.array([0.01, 0.03, 0.05, 0.1], np.float32)     # q(6) = 600, 200, 120, 60
    with IR(ACC) as ir:
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        r = ir.emit(relax.op.clip(y, relax.prim_value(0.0), relax.prim_value(6.0)), "relu6")
        before = ir.out(ir.emit(q(r, sy, np.zeros(4, np.uint8), axis=1), "q"))
    after = run(before)
    assert ops_of(after) == ["qcompile.requantize", "relax.minimum"]
    lim = after["main"].body.blocks[0].bindings[1].value.args[1].value.numpy().reshape(-1)
    np.testing.assert_array_equal(lim, [255, 200, 120, 60])
    within_one_lsb(before, after, acc_data())


def test_quantize_of_a_float_op_stays_a_region_entry():
    with IR({"x": ((1, 8), "float32")}) as ir:
        s = ir.emit(relax.op.nn.softmax(ir.p[0]), "softmax")
        before = ir.out(ir.emit(q(s, np.float32(1 / 255), np.uint8(0)), "q"))
    tvm.ir.assert_structural_equal(run(before), before)


def test_unfused_dequantize_quantize_is_reported_with_its_reason():
    """A dequantize -> quantize pair the pass cannot fuse (per-channel output zero points
    that differ) stays in f32: fuse_requantize says why (ctx.notes), report_float_ops lists
    it as an f32 requantize with that reason (model.json, --strict)."""
    from qcompile.relay_passes.report_float_ops import unconverted_ops

    with IR(ACC) as ir:
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        before = ir.out(ir.emit(q(y, np.full(4, 0.05, np.float32),
                                  np.array([3, 4, 5, 6], np.uint8)), "q_pc"))
    cx = ctx()
    after = FuseRequantize(cx)(before)
    assert ops_of(after) == ops_of(before)            # left alone
    notes = [n for n in cx.notes if n["node"] == "q_pc"]
    assert notes and "zero points that differ" in notes[0]["reason"], cx.notes
    cx.node_names = {"q_pc": "q_pc"}
    rows = unconverted_ops(after, cx)
    assert [(r["node"], r["relax_op"]) for r in rows] == [("q_pc", "requantize (f32)")]
    assert "zero points that differ" in rows[0]["reason"]


def test_quantize_of_a_float_op_is_not_reported():
    """quantize(f32 op(dequantize)) is where an integer region starts: no note, no entry."""
    from qcompile.relay_passes.report_float_ops import unconverted_ops

    with IR(ACC) as ir:
        y = ir.emit(dq(ir.p[0], SACC, np.zeros(4, np.int32), "int32", axis=1))
        s = ir.emit(relax.op.sigmoid(y), "sig")
        before = ir.out(ir.emit(q(s, np.float32(0.01), np.uint8(0)), "q"))
    cx = ctx()
    after = FuseRequantize(cx)(before)
    assert not [n for n in cx.notes if n["op"] == "requantize"]
    assert all(r["relax_op"] != "requantize (f32)" for r in unconverted_ops(after, cx))
