"""TVM workarounds installed at `import qcompile` (qcompile/tvm_compat.py)."""
from __future__ import annotations

import pytest

from qcompile import tvm_compat


def _vectorized_script(fn):
    import tvm

    tvm_compat.vectorize_nearbyint()
    from tvm import te
    from tvm.s_tir import Schedule

    a = te.placeholder((64,), "int32", name="a")
    b = te.compute((64,), lambda i: fn(a[i].astype("float32")), name="b")
    sch = Schedule(te.create_prim_func([a, b]))
    (i,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(i)
    mod = sch.mod
    for p in (tvm.s_tir.transform.LowerInitBlock(), tvm.s_tir.transform.ConvertBlocksToOpaque(),
              tvm.s_tir.transform.LowerOpaqueBlock(), tvm.tirx.transform.FlattenBuffer(),
              tvm.tirx.transform.VectorizeLoop()):
        mod = p(mod)
    return mod.script()


@pytest.mark.parametrize("case", ["plain", "fenced"])
def test_nearbyint_stays_vectorized(case):
    """relax.round legalizes to tirx.nearbyint; without TVectorizable the loop is scalarized
    (the residual add's requantize + FMA fence ran in scalar code)."""
    from tvm import tirx

    def fn(x):
        r = tirx.nearbyint(x)
        if case == "fenced":
            r = tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", r)
        return r

    txt = _vectorized_script(fn)
    assert "float32x64" in txt and "_s in" not in txt, txt
