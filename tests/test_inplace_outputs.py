"""relay_passes/use_inplace_outputs.py: which calls may write their output over an input.

IR before/after on small TE-made modules (a producer `call_tir` whose result feeds an
elementwise kernel), each refusal case separately, and the compiled result bit-exact with
and without the rewrite."""
import numpy as np
import pytest
import tvm
from tvm import relax, te

from qcompile.relay_passes import use_inplace_outputs as ip

SHAPE = (2, 8)


def _module(consumer, later_use=False, residual_is_param=False, res_dtype="int32"):
    """x -> y = x + 1 (fresh) -> z = consumer(x2, y) [-> y used again]."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, res_dtype))
    x2 = relax.Var("x2", relax.TensorType(SHAPE, "int32"))
    with bb.function("main", [x, x2]):
        with bb.dataflow():
            y = x if residual_is_param else bb.emit_te(
                lambda a: te.compute(a.shape, lambda *i: a(*i) + tvm.tirx.const(1, a.dtype), name="inc"), x,
                primfunc_name_hint="inc")
            z = bb.emit_te(consumer, x2, y, primfunc_name_hint="consumer")
            if later_use:
                z = bb.emit(relax.op.add(z, y))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get()


def _add(a, b):
    return te.compute(a.shape, lambda i, j: a[i, j] * 3 + b[i, j].astype("int32"), name="c")


def _chain(a, b):  # b passes through an intermediate block first (a fused requantize)
    t = te.compute(b.shape, lambda i, j: b[i, j] * 2, name="t")
    return te.compute(a.shape, lambda i, j: a[i, j] + t[i, j], name="c")


def _shifted(a, b):  # reads b at another index than it writes: never in place
    return te.compute(a.shape, lambda i, j: a[i, j] + b[i, (j + 1) % SHAPE[1]], name="c")


def _rewrite(mod):
    cands = ip.inplace_candidates(mod)
    return cands, *ip.use_inplace_outputs(mod, cands)


def _calls(mod):
    return [b.value for blk in mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]


@pytest.mark.parametrize("consumer", [_add, _chain], ids=["direct", "through-intermediate"])
def test_dead_fresh_input_is_overwritten(consumer):
    mod = _module(consumer)
    cands, out, n = _rewrite(mod)
    assert cands["consumer"] == [0, 1]  # both pointwise; input 0 is a parameter: kept
    assert n == 1
    calls = _calls(out)
    assert [c.op.name for c in calls] == ["relax.call_tir", "relax.call_tir_inplace"]
    inplace = calls[1]
    assert [int(i) for i in inplace.attrs.inplace_indices] == [1]
    assert inplace.args[0].name_hint == "consumer" + ip.INPLACE_SUFFIX
    f = out[inplace.args[0]]
    assert len(f.params) == 2  # the output buffer is input 1
    assert "consumer" in [gv.name_hint for gv in out.get_global_vars()]  # original kept


def _run(mod, x, x2):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(x2)).numpy()


@pytest.mark.parametrize("consumer", [_add, _chain], ids=["direct", "through-intermediate"])
def test_rewritten_module_computes_the_same(consumer):
    rng = np.random.default_rng(0)
    x = rng.integers(-100, 100, SHAPE).astype("int32")
    x2 = rng.integers(-100, 100, SHAPE).astype("int32")
    mod = _module(consumer)
    _, out, n = _rewrite(mod)
    assert n == 1
    np.testing.assert_array_equal(_run(out, x, x2), _run(mod, x, x2))


@pytest.mark.parametrize("case", ["used-later", "function-parameter", "shifted-read",
                                  "other-dtype"])
def test_refusals(case):
    if case == "used-later":
        mod = _module(_add, later_use=True)
    elif case == "function-parameter":
        mod = _module(_add, residual_is_param=True)
    elif case == "shifted-read":
        mod = _module(_shifted)
    else:
        mod = _module(lambda a, b: te.compute(a.shape, lambda i, j: a[i, j] + b[i, j].astype(
            "int32"), name="c"), res_dtype="int8")
    cands, out, n = _rewrite(mod)
    assert n == 0
    assert "relax.call_tir_inplace" not in [c.op.name for c in _calls(out)]
    if case in ("shifted-read", "other-dtype"):
        assert 1 not in cands.get("consumer", [])  # refused by the PrimFunc analysis
    else:
        assert 1 in cands["consumer"]  # allowed by the kernel, refused by the call site
