"""Numerics of qcompile's vectorizable f32 exp / erf / softmax (schedules/vector_math.py):
max error in ulp against the correctly rounded value, and that they compile to vector code
(no libm calls) in the exact build."""
from __future__ import annotations

import math

import numpy as np
import pytest

import qcompile  # noqa: F401


N = 1 << 17


def _build(fn, n=N):
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    from qcompile import targets

    a = te.placeholder((n,), "float32", name="a")
    b = fn(a)
    sch = Schedule(te.create_prim_func([a, b]))
    (i,) = sch.get_loops(sch.get_sblock(b.op.name))
    _, ii = sch.split(i, [None, 16])
    sch.vectorize(ii)
    return tvm.compile(sch.mod, target=targets.detect_host().tvm_target())


def _run(ex, x):
    import tvm

    y = tvm.runtime.tensor(np.zeros_like(x))
    ex(tvm.runtime.tensor(x), y)
    return y.numpy()


def _ulps(got, ref64):
    ref32 = ref64.astype(np.float32)
    return np.abs(got.astype(np.float64) - ref64) / np.spacing(np.abs(ref32)).astype(np.float64)


def _sample(lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(lo, hi, N // 2), np.linspace(lo, hi, N - N // 2)])
    return x.astype(np.float32)


def test_erf_max_error_is_two_ulp():
    from qcompile.schedules import vector_math as vm

    x = _sample(-5.0, 5.0)
    # the piece borders and tiny arguments, where a piecewise fit fails first
    borders = [vm.ERF_SMALL_BOUND] + [b for b, _, _ in vm.ERF_PIECES]
    extra = np.array([s * np.nextafter(np.float32(b), d) for b in borders for s in (1, -1)
                      for d in (0, 10)] + [1e-30, -1e-20, 1e-6, 0.0], np.float32)
    x = np.concatenate([x, extra]).astype(np.float32)
    x = np.resize(x, N)
    x[-len(extra):] = extra
    got = _run(_build(vm.erf_te), x)
    ref = np.array([math.erf(float(v)) for v in x.astype(np.float64)])
    err = _ulps(got, ref)
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])
    assert np.all(got[x == 0] == 0) and np.all(np.abs(got) <= 1)


def test_exp_max_error_is_two_ulp_and_limits():
    from qcompile.schedules import vector_math as vm

    x = _sample(vm.EXP_MIN, vm.EXP_MAX)
    got = _run(_build(vm.exp_te), x)
    err = _ulps(got, np.exp(x.astype(np.float64)))
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])
    edge = np.resize(np.array([-1000.0, -88.0, 89.0, 1000.0, 0.0], np.float32), N)
    e = _run(_build(vm.exp_te), edge)[:5]
    assert e[0] == 0 and e[1] < 1e-37 and np.isinf(e[2]) and np.isinf(e[3]) and e[4] == 1.0


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax_matches_float64(axis):
    """Any axis (YOLOv8's DFL head takes a softmax over axis 1 of a 4-D tensor)."""
    import tvm
    from tvm import relax

    from qcompile import codegen, targets

    x = np.random.default_rng(1).normal(0, 4, (3, 7, 128)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(xv, axis=axis))
        bb.emit_func_output(out)
    spec = targets.detect_host()
    fused = codegen.fuse(bb.get(), spec.tvm_target())
    assert any(gv.name_hint.startswith("softmax") for gv in fused.functions)
    ex = codegen.compile_fused(fused, spec.tvm_target())
    vm_ = relax.VirtualMachine(ex, tvm.cpu())
    got = vm_["main"](tvm.runtime.tensor(x)).numpy()
    # the f32 subtraction x - max is part of the formula (exp amplifies its rounding by |d|)
    d = (x - x.max(axis, keepdims=True)).astype(np.float64)
    ref = np.exp(d)
    ref /= ref.sum(axis, keepdims=True)
    # exp <= 2 ulp, the f32 sum of 128 terms and one division: well under 1e-6
    assert np.max(np.abs(got - ref) / ref) < 1e-6


def _compiled_asm(expr_of, fast_math=False):
    """(host assembly, fused function names) of a 64x64 f32 graph `expr_of(x)` built
    through qcompile's CPU pipeline."""
    from tvm import relax

    from qcompile import codegen, targets

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((64, 64), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(expr_of(xv))
        bb.emit_func_output(out)
    spec = targets.detect_host()
    fused = codegen.fuse(bb.get(), spec.tvm_target(), fast_math=fast_math)
    ex = codegen.compile_fused(fused, spec.tvm_target())
    asm = "".join(m.inspect_source("asm") for m in [ex.mod] + list(ex.mod.imports)
                  if m.kind == "llvm")
    return asm, [gv.name_hint for gv in fused.functions]


@pytest.mark.parametrize("fast_math", [False, True])
def test_exact_build_has_no_libm_calls(fast_math):
    """The default build legalizes erf/exp with the vector versions (no scalar erff/expf);
    --fast-math keeps TVM's own approximations."""
    from tvm import relax

    asm, names = _compiled_asm(
        lambda x: relax.op.exp(relax.op.multiply(x, relax.op.erf(x))), fast_math)
    assert "erff" not in asm and "expf" not in asm
    assert any("verf" in n for n in names) != fast_math, names


def test_tuning_task_extraction_accepts_them():
    """MetaSchedule estimates every task's flops at extraction (`qcompile tune`); its
    estimator has no rule for `tirx.Let`, so the functions must not use one."""
    import tvm
    from tvm import te
    from tvm.s_tir.analysis import estimate_tir_flops

    from qcompile.schedules import vector_math as vm

    a = te.placeholder((4, 128), "float32", name="a")
    for fn in (vm.erf_te, vm.exp_te, vm.softmax_te):
        f = te.create_prim_func([a, fn(a)])
        assert estimate_tir_flops(tvm.IRModule({"main": f})) > 0


@pytest.mark.parametrize("fast_math", [False, True])
def test_layer_norm_matches_float64(fast_math):
    """The lane-split layer norm over the last axis (both builds) vs float64 numpy."""
    import tvm
    from tvm import relax

    from qcompile import codegen, targets

    rng = np.random.default_rng(2)
    x = (rng.normal(0, 3, (2, 16, 768)) + 5).astype(np.float32)
    g = rng.normal(1, 0.2, 768).astype(np.float32)
    b = rng.normal(0, 0.5, 768).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.layer_norm(xv, relax.const(g), relax.const(b),
                                                        axes=[-1], epsilon=1e-5))
        bb.emit_func_output(out)
    spec = targets.detect_host()
    fused = codegen.fuse(bb.get(), spec.tvm_target(), fast_math)
    prims = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("ln_sum_part" in f.script() for f in prims)  # the lane-split version
    ex = codegen.compile_fused(fused, spec.tvm_target())
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    xd = x.astype(np.float64)
    mean = xd.mean(-1, keepdims=True)
    ref = (xd - mean) / np.sqrt(((xd - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b
    assert np.max(np.abs(got - ref)) < 2e-5 * np.max(np.abs(ref))


def test_sigmoid_max_error_is_three_ulp_and_limits():
    from qcompile.schedules import vector_math as vm

    x = _sample(-87.0, 40.0)
    got = _run(_build(vm.sigmoid_te), x)
    ref = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    err = _ulps(got, ref)
    assert err.max() <= 3.0, (err.max(), x[err.argmax()])
    edge = np.resize(np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0], np.float32), N)
    e = _run(_build(vm.sigmoid_te), edge)[:5]
    assert e[0] == 0 and e[1] < 1.2e-38 and e[2] == 0.5 and e[3] == 1 and e[4] == 1


def test_tanh_max_error_is_two_ulp():
    from qcompile.schedules import vector_math as vm

    x = _sample(-12.0, 12.0)
    tiny = np.array([1e-30, -1e-20, 1e-6, 0.0, 0.625, -0.625,
                     np.nextafter(np.float32(0.625), 0)], np.float32)
    x[-len(tiny):] = tiny
    got = _run(_build(vm.tanh_te), x)
    err = _ulps(got, np.tanh(x.astype(np.float64)))
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])
    assert np.all(got[x == 0] == 0) and np.all(np.abs(got) <= 1)


def test_sigmoid_and_tanh_builds_have_no_libm_calls():
    """YOLOv8's SiLU (x * sigmoid(x)) and the LSTM gates vectorize: no scalar expf / tanhf."""
    from tvm import relax

    asm, _ = _compiled_asm(lambda x: relax.op.tanh(relax.op.multiply(x, relax.op.sigmoid(x))))
    assert "expf" not in asm and "tanhf" not in asm


@pytest.mark.parametrize("name", ["cosh", "sinh"])
def test_cosh_sinh_max_error_is_two_ulp_and_limits(name):
    """TVM has no LLVM lowering of cosh / sinh ("unknown intrinsic tirx.cosh"): qcompile's,
    on the whole finite range (up to |x| = 89.4, beyond e^x's 88.7) and at the sinh
    polynomial's border |x| = 1; inf beyond."""
    from qcompile.schedules import vector_math as vm

    x = _sample(-89.0, 89.0)
    small = _sample(-2.0, 2.0, seed=1)[: N // 4]
    edge = np.array([1e-30, -1e-20, 1e-6, 0.0, 1.0, -1.0, np.nextafter(np.float32(1), 2),
                     88.0, 88.5, 89.4, -89.4], np.float32)
    x[: N // 4] = small
    x[-len(edge):] = edge
    got = _run(_build(getattr(vm, f"{name}_te")), x)
    ref = getattr(np, name)(x.astype(np.float64))
    err = _ulps(got, ref)
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])  # 1.4 / 1.6 ulp measured
    big = np.resize(np.array([100.0, -100.0], np.float32), N)
    e = _run(_build(getattr(vm, f"{name}_te")), big)[:2]
    assert np.isinf(e).all() and (e[0] > 0) and ((e[1] > 0) == (name == "cosh"))
