"""The generic default schedule (qcompile/schedules/generic.py) on an untuned fp32 reduction:
it must use every core and the vector unit (a regression: TVM refuses `vectorize` after
`decompose_reduction`, and the fallback then parallelized a batch loop of extent 1, leaving
every untuned conv/matmul serial and scalar)."""
import numpy as np


def _matmul_primfunc():
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 12, 128, 128), "float32"))
    b = relax.Var("b", relax.TensorType((1, 12, 128, 64), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)), mod


def test_reduction_is_parallel_vectorized_and_register_blocked():
    import re

    from qcompile.schedules import generic

    func, _ = _matmul_primfunc()
    text = str(generic.schedule_func(func, 8))
    par = [int(n) for n in re.findall(r"T\.parallel\(T\.int64\((\d+)\)\)", text)]
    assert par and max(par) > 1, text                  # spatial loops fused and parallel
    assert "T.vectorized(T.int64(8))" in text, text    # 8 f32 lanes in the reduction
    assert "T.unroll(T.int64(4))" in text, text        # 4 rows of accumulators per tile
    assert 'scope="local"' in text, text               # accumulated locally, written once


def test_scheduled_reduction_is_correct():
    import tvm

    from qcompile import codegen
    from qcompile.targets import resolve

    _, mod = _matmul_primfunc()
    target = resolve("sse4.2").tvm_target()
    fused = codegen.fuse(mod, target)
    ex = codegen.compile_fused(fused, target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 12, 128, 128)).astype(np.float32)
    b = rng.standard_normal((1, 12, 128, 64)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
