"""softmax(x) @ v as one f32 CPU kernel: the Relax pass (relay_passes/fuse_softmax_matmul.py),
the kernel's numerics (schedules/softmax_matmul.py: bit-identical to the two separate
kernels), and the whole CPU build of an attention-like graph."""
from __future__ import annotations

import numpy as np
import pytest

import qcompile  # noqa: F401


def _graph(x_shape, v_shape, axis=-1, merge_heads=False):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    v = relax.Var("v", relax.TensorType(v_shape, "float32"))
    with bb.function("main", [x, v]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.softmax(x, axis=axis), name_hint="probs")
            if merge_heads:
                y = bb.emit(relax.op.matmul(p, v), name_hint="ctx")
                y = bb.emit_output(relax.op.permute_dims(y, [0, 2, 1, 3]), name_hint="merged")
            else:
                y = bb.emit_output(relax.op.matmul(p, v), name_hint="ctx")
        bb.emit_func_output(y)
    return bb.get()


def _ops(mod):
    from tvm import relax

    names = []

    def visit(e):
        if isinstance(e, relax.Call) and hasattr(e.op, "name"):
            names.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def test_pass_fuses_softmax_then_matmul():
    from qcompile.relay_passes.fuse_softmax_matmul import fuse_softmax_matmul
    from qcompile.schedules import softmax_matmul

    out, fused, refused = fuse_softmax_matmul(_graph((1, 2, 32, 64), (1, 2, 64, 32)))
    assert fused == [("ctx", "probs")] and refused == []
    ops = _ops(out)
    assert "relax.nn.softmax" not in ops and "relax.matmul" not in ops
    assert ops.count("relax.call_tir") == 1
    prims = [gv.name_hint for gv, f in out.functions.items() if gv.name_hint != "main"]
    assert prims == [softmax_matmul.BLOCK]
    assert softmax_matmul.has_block(out[prims[0]])


def test_pass_absorbs_the_head_merging_transpose():
    from qcompile.relay_passes.fuse_softmax_matmul import fuse_softmax_matmul

    out, fused, _ = fuse_softmax_matmul(_graph((1, 2, 32, 64), (1, 2, 64, 32),
                                               merge_heads=True))
    assert fused == [("ctx", "probs")]
    assert _ops(out) == ["relax.call_tir"]
    assert [int(d) for d in out["main"].ret_ty.shape] == [1, 32, 2, 32]


@pytest.mark.parametrize("x_shape,v_shape,axis,why", [
    ((1, 2, 32, 64), (2, 64, 32), -1, "ranks differ"),       # broadcast matmul
    ((1, 2, 32, 24), (1, 2, 24, 32), -1, "multiple of 16"),  # row not lane-splittable
    ((1, 2, 32, 64), (1, 2, 64, 12), -1, "multiple of 8"),
    ((1, 2, 64, 64), (1, 2, 64, 32), 2, None),               # softmax over another axis
])
def test_pass_leaves_unsupported_shapes(x_shape, v_shape, axis, why):
    from qcompile.relay_passes.fuse_softmax_matmul import fuse_softmax_matmul

    out, fused, refused = fuse_softmax_matmul(_graph(x_shape, v_shape, axis))
    assert fused == []
    assert "relax.nn.softmax" in _ops(out) and "relax.matmul" in _ops(out)
    if why is None:
        assert refused == []  # not a last-axis softmax: not a candidate at all
    else:
        assert len(refused) == 1 and refused[0][0] == "ctx" and why in refused[0][1]


def _kernels(x_shape, v_shape, lanes, out_swapped=False):
    import tvm
    from tvm import te

    from qcompile import targets
    from qcompile.schedules import generic, softmax_matmul, vector_math
    from qcompile.tir_stack_allocs import register_pipeline

    target = targets.detect_host().tvm_target()

    def compile(f):
        return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                           target=target, tir_pipeline=register_pipeline())

    x = te.placeholder(x_shape, "float32", name="x")
    v = te.placeholder(v_shape, "float32", name="v")
    fused = softmax_matmul.schedule(
        te.create_prim_func([x, v, softmax_matmul.softmax_matmul_te(x, v, out_swapped)]),
        lanes)
    p = vector_math.softmax_te(x, -1)
    soft = generic.schedule_func(te.create_prim_func([x, p]), lanes)
    a = te.placeholder(x_shape, "float32", name="a")
    k = te.reduce_axis((0, x_shape[-1]), "k")
    mm = te.compute(x_shape[:-1] + v_shape[-1:],
                    lambda *i: te.sum(a[i[:-1] + (k,)] * v[i[:-2] + (k, i[-1])], axis=k),
                    name="matmul")
    mat = generic.schedule_func(te.create_prim_func([a, v, mm]), lanes)
    return fused, compile(fused), compile(soft), compile(mat)


@pytest.mark.parametrize("x_shape,v_shape,out_swapped", [
    ((1, 12, 128, 128), (1, 12, 128, 64), False),
    ((1, 12, 128, 128), (1, 12, 128, 64), True),
    ((3, 20, 32), (3, 32, 48), False),
    ((1, 2, 32, 64), (1, 2, 64, 24), False)])  # 24 columns: half-width vectors on AVX-512
def test_kernel_is_bit_identical_to_the_separate_kernels(x_shape, v_shape, out_swapped):
    import tvm

    from qcompile import targets
    from qcompile.schedules import generic

    lanes = generic.F32_LANES[generic.vector_bits(targets.detect_host().tvm_target())]
    fused, lf, ls, lm = _kernels(x_shape, v_shape, lanes, out_swapped)
    assert "T.parallel" in fused.script() and "T.vectorized" in fused.script()
    rng = np.random.default_rng(0)
    xs = rng.normal(0, 4, x_shape).astype("float32")
    vs = rng.normal(0, 1, v_shape).astype("float32")
    out_shape = x_shape[:-1] + v_shape[-1:]
    t = tvm.runtime.tensor
    swap = (lambda a: a.swapaxes(-3, -2)) if out_swapped else (lambda a: a)
    o1 = t(np.zeros(swap(np.zeros(out_shape)).shape, "float32"))
    o2, p = t(np.zeros(out_shape, "float32")), t(np.zeros(x_shape, "float32"))
    lf(t(xs), t(vs), o1)
    ls(t(xs), p)
    lm(p, t(vs), o2)
    np.testing.assert_array_equal(o1.numpy(), swap(o2.numpy()))
    e = np.exp(xs.astype(np.float64) - xs.max(-1, keepdims=True))
    ref = (e / e.sum(-1, keepdims=True)) @ vs.astype(np.float64)
    np.testing.assert_allclose(o1.numpy(), swap(ref), rtol=1e-5, atol=1e-6)


def test_cpu_build_runs_one_fused_kernel():
    import tvm
    from tvm import relax

    from qcompile import codegen, targets

    target = targets.detect_host().tvm_target()
    mod = _graph((1, 4, 32, 64), (1, 4, 64, 32))
    fused = codegen.fuse(mod, target)
    prims = sorted(gv.name_hint for gv, f in fused.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc))
    assert prims == ["softmax_matmul"]
    ex = codegen.compile_fused(fused, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(1)
    xs = rng.normal(0, 2, (1, 4, 32, 64)).astype("float32")
    vs = rng.normal(0, 1, (1, 4, 64, 32)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(vs)).numpy()
    e = np.exp(xs - xs.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (e / e.sum(-1, keepdims=True)) @ vs, rtol=1e-5, atol=1e-6)
