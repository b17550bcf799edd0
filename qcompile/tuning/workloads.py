"""The tuning workloads (structural hashes of the fused int8 PrimFuncs) of a model.

MetaSchedule keys a tuning record on the structure of the fused PrimFunc. Calibration-dependent
scalars (zero points, clip bounds, requantize multipliers) reach the kernels as tensor inputs
(`qcompile.ops.param_consts`), so two calibrations of one model have the same workloads and
one tuning database serves both; `scripts/record_transfer.py` measures it.
"""
from __future__ import annotations

import importlib


def int8_workload_hashes(model, spec) -> list[int]:
    """Structural hash of every fused PrimFunc with a qcompile x86 int8 template block of
    `model` (an ONNX path or ModelProto) as `qcompile build` fuses it for `spec`."""
    import tvm
    import tvm_ffi

    from .. import codegen, frontend
    from ..relay_passes import pipeline as lp
    from ..schedules.x86 import schedule

    qbuild = importlib.import_module("qcompile.build")  # the module, not the function
    imported = frontend.import_onnx(model, None)
    mod = lp.run(imported.mod, lp.LowPrecisionContext(spec=spec))
    mod, _ = qbuild._dispatch_kernels(mod, spec, [])
    fused = codegen.fuse(mod, spec.tvm_target())
    return [tvm_ffi.structural_hash(f.without_attr("global_symbol"))
            for _, f in fused.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and schedule.has_qcompile_block(f)]
