"""MetaSchedule builder for qcompile: LocalBuilder with a build function that does not
import `tvm.s_tir.tensor_intrin` in each freshly spawned worker (MetaSchedule's default
does, ~6-30 s per worker and batch on this machine; building an already tensorized
candidate needs no intrinsic registry), and a timeout suited to a loaded 2-core machine."""
from __future__ import annotations


def build_candidate(mod, target, _params):
    """Same as MetaSchedule's default_build minus the tensor-intrinsic import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def local_builder(max_workers: int | None = None, timeout_sec: float = 120.0):
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_sec,
                                   f_build=build_candidate)
