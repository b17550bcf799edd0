"""TIR host pass: small per-task buffers of parallel loops live on the stack.

Expects: a host PrimFunc of a CPU build just before `LowerTVMBuiltin` (the TIR pipeline's
host finalization), where each buffer a kernel's parallel chunk uses -- the s32 accumulator
tile of a conv / matmul template, compacted to the tile by TVM's buffer-region passes --
is an `AllocBuffer` inside the body of the `parallel` loop.

Guarantees: every such allocation of a constant size of at most `MAX_BYTES` is annotated
`disable_lower_builtin`, so `LowerTVMBuiltin` keeps it as a stack `alloca` (emitted in the
entry block of the outlined parallel lambda) instead of turning it into a
`TVMBackendAllocWorkspace` / `TVMBackendFreeWorkspace` pair per chunk. TVM keeps only
allocations *below* 1 KiB on the stack; a 16-accumulator AVX-512 tile is exactly 1 KiB, so
every chunk of every int8 kernel paid two calls into the runtime's workspace pool (a
thread-local lookup and a lock-free list each): on the BERT block's QK^T kernel (768 chunks)
they took ~60% as long as the kernel itself (`perf`, Ice Lake). On the stack LLVM may also
keep the tile in registers. Nothing else changes: larger buffers, buffers outside parallel
loops and non-constant sizes are left to the workspace pool.
"""
from __future__ import annotations

# stack budget per allocation (TVM's worker threads have the default 8 MiB stack)
MAX_BYTES = 16 * 1024
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"


def _const_bytes(buf) -> int | None:
    """Bytes of a constant-shaped buffer, None when a dim is symbolic."""
    import tvm

    n = 1
    for d in buf.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        n *= int(d)
    t = tvm.runtime.DataType(str(buf.dtype))
    return n * max(t.bits * t.lanes // 8, 1)


def _scope(buf) -> str:
    try:
        return str(buf.scope())
    except (AttributeError, TypeError):
        return "global"


class _Rewriter:
    def __init__(self):
        self.count = 0

    def visit(self, s, in_parallel: bool):
        from tvm import tirx

        if isinstance(s, tirx.SeqStmt):
            items = [self.visit(x, in_parallel) for x in s.seq]
            if all(a.same_as(b) for a, b in zip(items, s.seq)):
                return s
            return tirx.SeqStmt(items, s.span)
        if isinstance(s, tirx.For):
            par = in_parallel or s.kind == tirx.ForKind.PARALLEL
            body = self.visit(s.body, par)
            if body.same_as(s.body):
                return s
            return tirx.For(s.loop_var, s.min, s.extent, s.kind, body, s.thread_binding,
                            s.annotations, s.step, s.span)
        if isinstance(s, tirx.AttrStmt):
            body = self.visit(s.body, in_parallel)
            return s if body.same_as(s.body) else tirx.AttrStmt(s.node, s.attr_key, s.value,
                                                                 body, s.span)
        if isinstance(s, tirx.IfThenElse):
            then = self.visit(s.then_case, in_parallel)
            other = self.visit(s.else_case, in_parallel) if s.else_case is not None else None
            if then.same_as(s.then_case) and (other is None or other.same_as(s.else_case)):
                return s
            return tirx.IfThenElse(s.condition, then, other, s.span)
        if isinstance(s, tirx.While):
            body = self.visit(s.body, in_parallel)
            return s if body.same_as(s.body) else tirx.While(s.condition, body, s.span)
        if isinstance(s, tirx.AllocBuffer) and in_parallel:
            size = _const_bytes(s.buffer)
            ann = dict(s.annotations or {})
            if size is not None and size <= MAX_BYTES and _scope(s.buffer) in ("global",
                                                                               "local") \
                    and DISABLE_LOWER_BUILTIN not in ann:
                ann[DISABLE_LOWER_BUILTIN] = tirx.IntImm("bool", 1)  # C++ reads an IntImm
                self.count += 1
                return tirx.AllocBuffer(s.buffer, ann, s.span)
        return s


def StackAllocsInParallelLoops():
    """The pass (a `prim_func_pass`); see the module docstring."""
    import tvm

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="qcompile.StackAllocsInParallelLoops")
    def _pass(func, _mod, _ctx):
        r = _Rewriter()
        body = r.visit(func.body, False)
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass


def _pipeline_factory(**kwargs):
    """TVM's default (s_tir) TIR pipeline with this pass before `LowerTVMBuiltin`."""
    import tvm
    from tvm import tirx

    main, _host, device = tirx.get_tir_pipeline("s_tir", **kwargs)

    def finalize_host_passes():
        return tvm.ir.transform.Sequential([StackAllocsInParallelLoops(),
                                            tirx.transform.LowerTVMBuiltin(),
                                            tirx.transform.LowerIntrin()])

    return main, finalize_host_passes, device


PIPELINE = "qcompile_cpu"


def register_pipeline() -> str:
    """Register the TIR pipeline under `PIPELINE` (idempotent) and return its name."""
    from tvm import tirx

    tirx.register_tir_pipeline(PIPELINE, _pipeline_factory)
    return PIPELINE
