"""Pass 1 (decompose_fake_quantize): IR before/after, and what it leaves in float."""
import numpy as np
import pytest
import tvm
from tvm import relax

import qcompile.ops as qops
from lpt_helpers import IR, c, ctx, dq, names, ops_of, q
from qcompile.relay_passes.decompose_fake_quantize import DecomposeFakeQuantize

X = {"x": ((1, 4, 2, 2), "float32")}


def _scale(lo, hi, levels):
    return np.float32((np.float64(np.float32(hi)) - np.float64(np.float32(lo))) / (levels - 1))


def fq_module(lo, hi, levels=256, out=None, shape=(1, 4, 2, 2)):
    with IR({"x": (shape, "float32")}) as ir:
        ol, oh = (lo, hi) if out is None else out
        y = ir.emit(qops.fake_quantize(ir.p[0], c(lo, "float32"), c(hi, "float32"),
                                       c(ol, "float32"), c(oh, "float32"), levels), "fq")
        ir.emit(relax.op.nn.relu(y), "relu")
        return ir.out(y)


def test_activation_fake_quantize_becomes_quantize_dequantize():
    lo, hi = -124 * 0.02, 131 * 0.02
    before = fq_module(lo, hi)
    after = DecomposeFakeQuantize(ctx())(before)
    s = _scale(lo, hi, 256)
    with IR(X) as ir:
        qv = ir.emit(q(ir.p[0], s, np.uint8(124), axis=0))
        expected = ir.out(ir.emit(dq(qv, s, np.uint8(124), axis=0)))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[:2] == ["fq__q", "fq"]       # the FQ's var keeps its name


def test_255_levels_clip_to_254():
    before = fq_module(0.0, 2.54, levels=255)
    after = DecomposeFakeQuantize(ctx())(before)
    s = _scale(0.0, 2.54, 255)
    with IR(X) as ir:
        qv = ir.emit(q(ir.p[0], s, np.uint8(0), axis=0))
        qv = ir.emit(relax.op.clip(qv, relax.prim_value(0), relax.prim_value(254)))
        expected = ir.out(ir.emit(dq(qv, s, np.uint8(0), axis=0)))
    tvm.ir.assert_structural_equal(after, expected)


def test_output_range_differs_from_input_range():
    after = DecomposeFakeQuantize(ctx())(fq_module(0.0, 2.55, out=(-1.28, 1.27)))
    dqv = [b.value for b in after["main"].body.blocks[0].bindings
           if b.var.name == "fq"][0]
    assert float(dqv.args[1].value.numpy()) == pytest.approx(0.01)
    assert int(dqv.args[2].value.numpy()) == 128


@pytest.mark.parametrize("levels, rng, why", [
    (16, (0.0, 1.5), "levels=16"),
    (256, (2.0, -2.0), "input_low > input_high"),
    (256, (-0.37, 2.71), "non-integer zero point"),
    (256, (0.5, 2.0), "does not contain 0.0"),
])
def test_left_in_float_and_reported(levels, rng, why):
    cx = ctx()
    after = DecomposeFakeQuantize(cx)(fq_module(*rng, levels=levels))
    assert qops.FAKE_QUANTIZE in ops_of(after)
    assert any(why in n["reason"] and n["node"] == "fq" for n in cx.notes), cx.notes


def _weight_fq(w, m, levels=255):
    with IR({"x": ((1, 2, 3, 3), "float32")}) as ir:
        shp = (-1, 1, 1, 1)
        wf = ir.emit(qops.fake_quantize(c(w), c(-m.reshape(shp)), c(m.reshape(shp)),
                                        c(-m.reshape(shp)), c(m.reshape(shp)), levels), "w_fq")
        return ir.out(ir.emit(relax.op.nn.conv2d(ir.p[0], wf), "conv"))


def test_weight_fake_quantize_folds_into_int8_per_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = 100.0                       # beyond the range: clamps to +127
    m = np.array([1.5, 2.0, 0.7], np.float32)
    after = DecomposeFakeQuantize(ctx())(_weight_fq(w, m))
    b = {b.var.name: b.value for b in after["main"].body.blocks[0].bindings}["w_fq"]
    assert b.op.name == "relax.dequantize" and int(b.attrs.axis) == 0
    wq = b.args[0].value.numpy()
    assert wq.dtype == np.int8 and wq.min() >= -127 and wq.max() <= 127 and wq[0, 0, 0, 0] == 127
    s = b.args[1].value.numpy()
    np.testing.assert_allclose(s, m.astype(np.float64) * 2 / 254, rtol=1e-6)
    assert not b.args[2].value.numpy().any()
    # the int8 value is exactly OpenVINO's level index: FQ(w) == wq * s up to f32 rounding
    from qcompile.reference import fake_quantize

    ref = fake_quantize(w, -m.reshape(-1, 1, 1, 1), m.reshape(-1, 1, 1, 1),
                        -m.reshape(-1, 1, 1, 1), m.reshape(-1, 1, 1, 1), 255)
    np.testing.assert_allclose(wq * s.reshape(-1, 1, 1, 1), ref, rtol=1e-6, atol=1e-7)


def test_quantize_linear_of_a_constant_is_folded():
    w = np.array([[0.5, -1.0], [0.26, 3.0]], np.float32)
    with IR({"x": ((1, 2), "float32")}) as ir:
        wq = ir.emit(relax.op.quantize(c(w), c(np.float32(0.02)), c(np.int8(0)), axis=0,
                                       out_dtype="int8"))
        wd = ir.emit(dq(wq, np.float32(0.02), np.int8(0), "int8", axis=0))
        before = ir.out(ir.emit(relax.op.matmul(ir.p[0], wd)))
    after = DecomposeFakeQuantize(ctx())(before)
    consts = [b.value.args[0] for b in after["main"].body.blocks[0].bindings
              if isinstance(b.value, relax.Call) and b.value.op.name == "relax.dequantize"]
    np.testing.assert_array_equal(consts[0].value.numpy(), [[25, -50], [13, 127]])
    assert "relax.quantize" not in ops_of(after)


def test_int8_activation_quantization_is_canonicalized_to_uint8():
    with IR(X) as ir:
        qv = ir.emit(q(ir.p[0], np.float32(0.1), np.int8(-3), "int8"), "q")
        before = ir.out(ir.emit(dq(qv, np.float32(0.1), np.int8(-3), "int8"), "d"))
    after = DecomposeFakeQuantize(ctx())(before)
    with IR(X) as ir:
        qv = ir.emit(q(ir.p[0], np.float32(0.1), np.uint8(125), "uint8"))
        expected = ir.out(ir.emit(dq(qv, np.float32(0.1), np.uint8(125), "uint8")))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[:2] == ["q", "d"]


def test_int8_quantize_with_a_non_dequantize_use_stays_int8():
    with IR(X) as ir:
        qv = ir.emit(q(ir.p[0], np.float32(0.1), np.int8(0), "int8"), "q")
        before = ir.out(qv)
    after = DecomposeFakeQuantize(ctx())(before)
    tvm.ir.assert_structural_equal(after, before)


def test_uint8_weight_with_zero_point_becomes_symmetric_int8():
    w = np.array([[130, 0], [255, 128]], np.uint8)
    with IR({"x": ((1, 2), "float32")}) as ir:
        wd = ir.emit(dq(c(w), np.float32(0.5), np.uint8(128), "uint8", axis=0))
        before = ir.out(ir.emit(relax.op.matmul(ir.p[0], wd)))
    after = DecomposeFakeQuantize(ctx())(before)
    d = [b.value for b in after["main"].body.blocks[0].bindings
         if isinstance(b.value, relax.Call) and b.value.op.name == "relax.dequantize"][0]
    np.testing.assert_array_equal(d.args[0].value.numpy(), np.array([[2, -128], [127, 0]],
                                                                     np.int8))
    assert int(d.args[2].value.numpy()) == 0
