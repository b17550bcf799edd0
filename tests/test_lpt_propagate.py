"""Pass 2 (propagate_dequantize): dequantize moves below precision-preserving ops."""
import numpy as np
import pytest
import tvm
from tvm import relax

from lpt_helpers import IR, c, ctx, dq, names, ops_of
from qcompile.relay_passes.propagate_dequantize import RULES, PropagateDequantize

S, Z = np.float32(0.05), np.uint8(10)
X = {"x": ((1, 4, 6, 6), "uint8")}


def run(before):
    return PropagateDequantize(ctx())(before)


def unary(make, name="op"):
    """Before: make(dequantize(x)); Expected: dequantize(make_int(x))."""
    with IR(X) as ir:
        d = ir.emit(dq(ir.p[0], S, Z))
        return ir.out(ir.emit(make(d), name))


@pytest.mark.parametrize("make, make_int", [
    (lambda d: relax.op.reshape(d, (1, 4, 36)), lambda x: relax.op.reshape(x, (1, 4, 36))),
    (lambda d: relax.op.permute_dims(d, [0, 2, 3, 1]),
     lambda x: relax.op.permute_dims(x, [0, 2, 3, 1])),
    (lambda d: relax.op.nn.max_pool2d(d, (3, 3), (2, 2), (1, 1)),
     lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1))),
    (lambda d: relax.op.strided_slice(d, [2], [1], [5]),
     lambda x: relax.op.strided_slice(x, [2], [1], [5])),
    (lambda d: relax.op.nn.pad(d, [0, 0, 0, 0, 1, 1, 2, 2], pad_value=0.0),
     lambda x: relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 2, 2], pad_value=10.0)),   # 0.0 -> zp
    (lambda d: relax.op.nn.relu(d),
     lambda x: relax.op.clip(x, relax.prim_value(10), relax.prim_value(255))),
    (lambda d: relax.op.clip(d, relax.prim_value(0.0), relax.prim_value(6.0)),
     lambda x: relax.op.clip(x, relax.prim_value(10), relax.prim_value(130))),
], ids=["reshape", "permute", "max_pool", "slice", "pad", "relu", "clip"])
def test_dequantize_moves_below(make, make_int):
    after = run(unary(make))
    with IR(X) as ir:
        y = ir.emit(make_int(ir.p[0]))
        expected = ir.out(ir.emit(dq(y, S, Z)))
    tvm.ir.assert_structural_equal(after, expected)
    assert names(after)[:2] == ["op", "op__dq"]     # the integer op keeps the node's name


def test_clip_to_a_bound_between_levels_stays():
    before = unary(lambda d: relax.op.clip(d, relax.prim_value(0.0), relax.prim_value(0.123)))
    tvm.ir.assert_structural_equal(run(before), before)


def test_a_refused_rule_reports_its_reason():
    c_ = ctx()
    before = unary(lambda d: relax.op.clip(d, relax.prim_value(0.0), relax.prim_value(0.123)))
    tvm.ir.assert_structural_equal(PropagateDequantize(c_)(before), before)
    assert c_.notes == [{"node": "op", "op": "clip", "reason": "dequantize not propagated "
                         "through it: clip bound is not a quantization level"}]


def test_scale_by_positive_scalar_constant():
    after = run(unary(lambda d: relax.op.multiply(d, c(np.float32(4.0)))))
    with IR(X) as ir:
        expected = ir.out(ir.emit(dq(ir.p[0], np.float32(0.2), Z)))
    tvm.ir.assert_structural_equal(after, expected)
    before = unary(lambda d: relax.op.multiply(d, c(np.float32(-4.0))))
    tvm.ir.assert_structural_equal(run(before), before)


def test_per_channel_axis_follows_permute_and_constants_fold():
    w = np.arange(12, dtype=np.int8).reshape(3, 4) - 6
    s = np.array([0.1, 0.2, 0.3], np.float32)
    with IR({"x": ((2, 4), "float32")}) as ir:
        wd = ir.emit(dq(c(w), s, np.zeros(3, np.int8), "int8", axis=0))
        wt = ir.emit(relax.op.permute_dims(wd, [1, 0]), "wt")
        before = ir.out(ir.emit(relax.op.matmul(ir.p[0], wt)))
    after = run(before)
    with IR({"x": ((2, 4), "float32")}) as ir:
        wt = ir.emit(dq(c(w.T.copy()), s, np.zeros(3, np.int8), "int8", axis=1))
        expected = ir.out(ir.emit(relax.op.matmul(ir.p[0], wt)))
    tvm.ir.assert_structural_equal(after, expected)


def test_per_channel_reshape_that_merges_the_axis_stays():
    s = np.linspace(0.1, 0.4, 4).astype(np.float32)
    with IR(X) as ir:
        d = ir.emit(dq(ir.p[0], s, np.zeros(4, np.uint8), axis=1))
        before = ir.out(ir.emit(relax.op.reshape(d, (1, 144))))
    tvm.ir.assert_structural_equal(run(before), before)


def test_per_channel_split_by_reshape_follows_the_varying_part():
    """A 1x1 conv's O*kh*kw output channels with the scale of O (a ConvTranspose imported as
    conv + depth-to-space): reshaped to [N, O, kh, kw, H, W], per-axis along O. A split
    whose parts both vary stays."""
    s = np.repeat(np.array([0.1, 0.2, 0.3], np.float32), 4)        # O = 3, kh = kw = 2
    z = np.zeros(12, np.uint8)
    with IR({"x": ((1, 12, 5, 5), "uint8")}) as ir:
        d = ir.emit(dq(ir.p[0], s, z, axis=1))
        before = ir.out(ir.emit(relax.op.reshape(d, (1, 3, 2, 2, 5, 5)), "r"))
    after = run(before)
    with IR({"x": ((1, 12, 5, 5), "uint8")}) as ir:
        r = ir.emit(relax.op.reshape(ir.p[0], (1, 3, 2, 2, 5, 5)), "r")
        expected = ir.out(ir.emit(dq(r, s[::4].copy(), z[:3].copy(), axis=1)))
    tvm.ir.assert_structural_equal(after, expected)
    s2 = np.linspace(0.1, 1.2, 12).astype(np.float32)
    with IR({"x": ((1, 12, 5, 5), "uint8")}) as ir:
        d = ir.emit(dq(ir.p[0], s2, z, axis=1))
        before = ir.out(ir.emit(relax.op.reshape(d, (1, 3, 2, 2, 5, 5))))
    tvm.ir.assert_structural_equal(run(before), before)


def test_per_channel_constant_folds_through_a_reshape_that_merges_the_axis():
    """A ConvTranspose weight [I, O, kh, kw] per channel along O, permuted to [O, kh, kw, I]
    and reshaped to the 1x1 conv's [O*kh*kw, I, 1, 1]: the scale repeats over kh*kw."""
    w = (np.arange(4 * 3 * 2 * 2) % 15 - 7).astype(np.int8).reshape(4, 3, 2, 2)
    s = np.array([0.1, 0.2, 0.3], np.float32)
    with IR({"x": ((1, 4, 5, 5), "float32")}) as ir:
        wd = ir.emit(dq(c(w), s, np.zeros(3, np.int8), "int8", axis=1))
        wp = ir.emit(relax.op.permute_dims(wd, [1, 2, 3, 0]))
        wr = ir.emit(relax.op.reshape(wp, (12, 4, 1, 1)))
        before = ir.out(ir.emit(relax.op.nn.conv2d(ir.p[0], wr)))
    after = run(before)
    with IR({"x": ((1, 4, 5, 5), "float32")}) as ir:
        wq = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(12, 4, 1, 1))
        wr = ir.emit(dq(c(wq), np.repeat(s, 4), np.zeros(12, np.int8), "int8", axis=0))
        expected = ir.out(ir.emit(relax.op.nn.conv2d(ir.p[0], wr)))
    tvm.ir.assert_structural_equal(after, expected)


def test_concat_with_equal_parameters_and_split():
    with IR({"a": ((1, 2, 4, 4), "uint8"), "b": ((1, 2, 4, 4), "uint8")}) as ir:
        da = ir.emit(dq(ir.p[0], S, Z))
        db = ir.emit(dq(ir.p[1], S, Z))
        cat = ir.emit(relax.op.concat([da, db], axis=1), "cat")
        parts = ir.emit(relax.op.split(cat, 2, axis=2), "parts")
        p0 = ir.emit(relax.TupleGetItem(parts, 0))
        before = ir.out(ir.emit(relax.op.nn.relu(p0), "relu"))
    after = run(before)
    # the relu reads split part 0 through the dequantized tuple: it runs on the integers
    assert ops_of(after) == ["relax.concat", "relax.split", "relax.clip", "relax.dequantize"]
    with IR({"a": ((1, 2, 4, 4), "uint8"), "b": ((1, 2, 4, 4), "uint8")}) as ir:
        da = ir.emit(dq(ir.p[0], S, np.uint8(0)))
        db = ir.emit(dq(ir.p[1], np.float32(0.07), Z))
        before2 = ir.out(ir.emit(relax.op.concat([da, db], axis=1), "cat"))
    tvm.ir.assert_structural_equal(run(before2), before2)   # unequal parameters: pass 4's job


def test_rules_table_separates_check_from_transform():
    for name, rule in RULES.items():
        assert callable(rule.can_transform) and callable(rule.transform), name
