"""tir_stack_allocs: small buffers of parallel chunks stay on the stack (no workspace calls).

IR level on hand-built statements; then a real int8 dense kernel compiled with and without
the pass: fewer TVMBackendAllocWorkspace calls in its object code, identical results."""
import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from qcompile import targets
from qcompile.relay_passes import x86_int8_dispatch as disp
from qcompile.schedules.x86.lower import lower
from qcompile.tir_stack_allocs import DISABLE_LOWER_BUILTIN, MAX_BYTES, _Rewriter, \
    register_pipeline


def _loop(kind, *allocs):
    i = tirx.Var("i", "int32")
    body = tirx.SeqStmt([tirx.AllocBuffer(b) for b in allocs]
                        + [tirx.Evaluate(tirx.const(0, "int32"))])
    return tirx.For(i, tirx.const(0, "int32"), tirx.const(4, "int32"), kind, body)


def _annotated(stmt):
    return [DISABLE_LOWER_BUILTIN in (a.annotations or {}) for a in stmt.body.seq[:-1]]


def test_small_buffers_in_parallel_loops_are_annotated():
    small = tirx.decl_buffer((256,), "int32", name="acc")        # 1 KiB: TVM's limit
    big = tirx.decl_buffer((MAX_BYTES // 4 + 1,), "int32", name="big")
    r = _Rewriter()
    out = r.visit(_loop(tirx.ForKind.PARALLEL, small, big), False)
    assert _annotated(out) == [True, False] and r.count == 1


def test_buffers_outside_parallel_loops_are_left_alone():
    small = tirx.decl_buffer((256,), "int32", name="acc")
    r = _Rewriter()
    loop = _loop(tirx.ForKind.SERIAL, small)
    assert r.visit(loop, False).same_as(loop) and r.count == 0


def _dense_module(m=64, k=256, n=64, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((m, k), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(xv, relax.const(w), out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get(), w


def test_dense_kernel_without_per_chunk_workspace_calls():
    spec = targets.detect_host()
    if spec.family != "x86":
        pytest.skip("x86 host only")
    mod, w = _dense_module()
    lowered = lower(disp.dispatch(mod, spec), spec, strict=True)
    target = spec.tvm_target()
    exes, asm = {}, {}
    for name, pipeline in (("default", "default"), ("stack", register_pipeline())):
        with target:
            ex = tvm.compile(lowered, target=target, tir_pipeline=pipeline)
        exes[name] = ex
        asm[name] = "".join(m.inspect_source("asm") for m in ex.mod._collect_from_import_tree(
            lambda m: m.kind == "llvm"))
    assert asm["stack"].count("TVMBackendAllocWorkspace") < \
        asm["default"].count("TVMBackendAllocWorkspace")
    x = np.random.default_rng(1).integers(0, 256, (64, 256)).astype(np.uint8)
    ref = x.astype(np.int64) @ w.astype(np.int64)
    for name, ex in exes.items():
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(got, ref, err_msg=name)
