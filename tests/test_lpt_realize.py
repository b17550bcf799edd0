"""Pass 3 (realize_integer_ops): compute ops on dequantized inputs become integer ops.

Each case checks the IR (structurally, or the op sequence) and that the realization computes
what the float graph computed: `reference.run(before)` against `reference.run(after)`."""
import numpy as np
import pytest
import tvm
from tvm import relax

from lpt_helpers import IR, c, ctx, dq, names, ops_of, q
from qcompile import reference
from qcompile.relay_passes.realize_integer_ops import RealizeIntegerOps

RNG = np.random.default_rng(0)


def run(before, cx=None):
    return RealizeIntegerOps(cx or ctx())(before)


def same_values(before, after, inputs, rtol=2e-6, atol=0.0):
    """`atol`: a float bias is rounded to the accumulator's scale (half a step of error)."""
    a = reference.run(before, inputs)
    b = reference.run(after, inputs)
    np.testing.assert_allclose(b, a, rtol=rtol, atol=atol + rtol * float(np.abs(a).max()))


def u8(shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def s8w(shape):
    return RNG.integers(-127, 128, shape).astype(np.int8)


def conv_module(x_shape, w, sx, zx, sw, groups=1, pad=(1, 1, 1, 1), strides=(1, 1),
                dilation=(1, 1), x_axis=1, bias=None):
    with IR({"x": (x_shape, "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], sx, zx, axis=x_axis))
        wd = ir.emit(dq(c(w), sw, np.zeros(np.shape(sw), np.int8), "int8", axis=0))
        y = ir.emit(relax.op.nn.conv2d(xd, wd, strides, pad, dilation, groups), "conv")
        if bias is not None:
            y = ir.emit(relax.op.add(y, c(bias.reshape(1, -1, 1, 1))), "conv_bias")
        return ir.out(y)


def test_conv_with_zero_point_pads_with_it_and_folds_the_term():
    w = s8w((6, 4, 3, 3))
    sw = np.linspace(0.01, 0.02, 6).astype(np.float32)
    before = conv_module((1, 4, 5, 5), w, np.float32(0.1), np.uint8(7), sw)
    after = run(before)
    with IR({"x": ((1, 4, 5, 5), "uint8")}) as ir:
        p = ir.emit(relax.op.nn.pad(ir.p[0], [0, 0, 0, 0, 1, 1, 1, 1], pad_value=7.0))
        acc = ir.emit(relax.op.nn.conv2d(p, c(w), (1, 1), (0, 0, 0, 0), (1, 1), 1, "NCHW",
                                         "OIHW", "NCHW", "int32"))
        comp = -7 * w.astype(np.int64).reshape(6, -1).sum(1)
        acc = ir.emit(relax.op.add(acc, c(comp.astype(np.int32).reshape(1, -1, 1, 1))))
        scale = (np.float64(np.float32(0.1)) * sw.astype(np.float64)).astype(np.float32)
        expected = ir.out(ir.emit(dq(acc, scale, np.zeros(6, np.int32), "int32", axis=1)))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[:3] == ["conv__pad", "conv", "conv__zp"]
    same_values(before, after, [u8((1, 4, 5, 5))])


@pytest.mark.parametrize("groups, strides, dilation", [(1, (2, 2), (1, 1)), (2, (1, 1), (2, 2)),
                                                        (4, (2, 1), (1, 2))])
def test_conv_grouped_strided_dilated(groups, strides, dilation):
    w = s8w((4, 4 // groups, 3, 3))
    before = conv_module((1, 4, 7, 6), w, np.float32(0.03), np.uint8(255), np.float32(0.01),
                         groups, strides=strides, dilation=dilation,
                         bias=RNG.standard_normal(4).astype(np.float32))
    after = run(before)
    assert ops_of(after)[:4] == ["relax.nn.pad", "relax.nn.conv2d", "relax.add",
                                 "relax.dequantize"]
    same_values(before, after, [u8((1, 4, 7, 6))], atol=0.5 * 0.03 * 0.01 + 1e-6)


def test_depthwise_takes_per_channel_activation_parameters():
    sx = np.array([0.1, 0.2, 0.05], np.float32)
    w = s8w((3, 1, 3, 3))
    with IR({"x": ((1, 3, 5, 5), "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], sx, np.zeros(3, np.uint8), axis=1))
        wd = ir.emit(dq(c(w), np.float32(0.01), np.int8(0), "int8", axis=0))
        before = ir.out(ir.emit(relax.op.nn.conv2d(xd, wd, padding=(1, 1, 1, 1), groups=3)))
    after = run(before)
    assert ops_of(after) == ["relax.nn.conv2d", "relax.dequantize"]
    same_values(before, after, [u8((1, 3, 5, 5))])


def test_dense_and_bias_fold_into_one_s32_constant():
    w = s8w((8, 5))
    sw = np.linspace(0.01, 0.03, 5).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    with IR({"a": ((2, 3, 8), "uint8")}) as ir:
        ad = ir.emit(dq(ir.p[0], np.float32(0.02), np.uint8(100)))
        wd = ir.emit(dq(c(w), sw, np.zeros(5, np.int8), "int8", axis=1))
        m = ir.emit(relax.op.matmul(ad, wd), "fc")
        before = ir.out(ir.emit(relax.op.add(m, c(b)), "fc_bias"))
    after = run(before)
    assert ops_of(after) == ["relax.matmul", "relax.add", "relax.dequantize"]
    assert names(after)[:2] == ["fc", "fc_bias"]
    bias = [bd.value for bd in after["main"].body.blocks[0].bindings
            if bd.var.name == "fc_bias"][0].args[1].value.numpy()
    s_acc = np.float64(np.float32(0.02)) * sw.astype(np.float64)
    expect = -100 * w.astype(np.int64).sum(0) + np.round(b / s_acc.astype(np.float32))
    np.testing.assert_array_equal(bias.reshape(-1), expect.astype(np.int32))
    same_values(before, after, [u8((2, 3, 8))], atol=0.5 * float(s_acc.max()) + 1e-6)


def test_int32_bias_dequantized_with_the_accumulator_scale_is_added_exactly():
    """ONNX Runtime writes a conv bias as int32 with scale s_x * s_w: it is added as is."""
    w = s8w((3, 2, 1, 1))
    sw = np.array([0.01, 0.02, 0.04], np.float32)
    sacc = (np.float32(0.5) * sw).astype(np.float32)
    bq = np.array([1001, -7, 123456], np.int32)
    with IR({"x": ((1, 2, 2, 2), "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], np.float32(0.5), np.uint8(0)))
        wd = ir.emit(dq(c(w), sw, np.zeros(3, np.int8), "int8", axis=0))
        bd = ir.emit(dq(c(bq), sacc, np.zeros(3, np.int32), "int32", axis=0))
        y = ir.emit(relax.op.nn.conv2d(xd, wd))
        before = ir.out(ir.emit(relax.op.add(y, relax.op.reshape(bd, (1, 3, 1, 1))), "conv"))
    from qcompile.relay_passes.propagate_dequantize import PropagateDequantize

    after = run(PropagateDequantize(ctx())(before))
    bias = [b.value for b in after["main"].body.blocks[0].bindings
            if b.var.name == "conv"][0].args[1].value.numpy()
    np.testing.assert_array_equal(bias.reshape(-1), bq)


def test_matmul_of_two_activations_with_zero_points():
    with IR({"a": ((2, 4, 6), "uint8"), "x": ((2, 6, 5), "float32")}) as ir:
        ad = ir.emit(dq(ir.p[0], np.float32(0.1), np.uint8(3)))
        bq = ir.emit(q(ir.p[1], np.float32(0.05), np.uint8(131)), "bq")
        bd = ir.emit(dq(bq, np.float32(0.05), np.uint8(131)))
        before = ir.out(ir.emit(relax.op.matmul(ad, bd), "mm"))
    after = run(before)
    ops = ops_of(after)
    assert ops.count("relax.matmul") == 1 and "relax.sum" in ops
    mm = [b.value for b in after["main"].body.blocks[0].bindings if b.var.name == "mm"][0]
    assert [str(a.ty.dtype) for a in mm.args] == ["uint8", "int8"]
    a = u8((2, 4, 6))
    x = RNG.standard_normal((2, 6, 5)).astype(np.float32) * 3
    same_values(before, after, [a, x])


def test_global_average_pool_and_avg_pool():
    with IR({"x": ((1, 3, 4, 4), "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], np.float32(0.1), np.uint8(9)))
        g = ir.emit(relax.op.mean(xd, axis=[2, 3], keepdims=True), "gap")
        p = ir.emit(relax.op.nn.avg_pool2d(xd, (3, 3), (1, 1), (1, 1, 1, 1),
                                           count_include_pad=True), "avg")
        before = ir.out(ir.emit(relax.Tuple([g, p])))
    after = run(before)
    assert ops_of(after) == ["relax.astype", "relax.sum", "relax.add", "relax.dequantize",
                             "relax.nn.pad", "relax.nn.conv2d", "relax.add", "relax.dequantize"]
    x = u8((1, 3, 4, 4))
    for a, b in zip(reference.run(before, [x]), reference.run(after, [x])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_unrealizable_ops_stay_float_and_say_why():
    cx = ctx()
    with IR({"x": ((1, 2, 3, 3), "uint8")}) as ir:
        xd = ir.emit(dq(ir.p[0], np.float32(0.1), np.uint8(0)))
        wd = ir.emit(dq(c(u8((2, 2, 1, 1))), np.float32(0.1), np.uint8(3), axis=0))
        before = ir.out(ir.emit(relax.op.nn.conv2d(xd, wd), "conv"))
    after = run(before, cx)
    tvm.ir.assert_structural_equal(after, before)
    assert cx.notes == [{"node": "conv", "op": "conv2d",
                         "reason": "weight is not symmetric int8 (zero point != 0)"}]
