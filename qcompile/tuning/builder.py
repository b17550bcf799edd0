"""MetaSchedule builder for qcompile: LocalBuilder with a build function that does not
import `tvm.s_tir.tensor_intrin` in each freshly spawned worker (MetaSchedule's default
does, ~6-30 s per worker and batch on this machine; building an already tensorized
candidate needs no intrinsic registry), and a timeout suited to a loaded 2-core machine.

Candidates are exported as a linked shared library (`.so`), not MetaSchedule's default
`.tar` of object files: a `.tar` is linked where it is loaded, which needs a C toolchain on
every RPC server (and serializes the link in the single local runner process); a `.so`
needs only the TVM runtime that the server already has."""
from __future__ import annotations


def build_candidate(mod, target, _params):
    """Same as MetaSchedule's default_build minus the tensor-intrinsic import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from qcompile.tvm_compat import vectorize_nearbyint

    vectorize_nearbyint()  # measure what the build will run (vector requantize epilogues)

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=tir_pipeline(target))


def tir_pipeline(target) -> str:
    """The TIR pipeline the build uses for `target` (codegen.compile_fused): measure that."""
    import tvm

    t = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if t.kind.name == "llvm":
        from qcompile.tir_stack_allocs import register_pipeline

        return register_pipeline()
    return "default"


def export_shared(mod) -> str:
    """Export a built candidate as a linked .so in a fresh temporary directory (removed by
    MetaSchedule's RemoveBuildArtifact callback after measurement)."""
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="qcompile-cand-"), "candidate.so")
    mod.export_library(path)
    return path


def local_builder(max_workers: int | None = None, timeout_sec: float = 120.0):
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec,
                                   f_build=build_candidate, f_export=export_shared)
