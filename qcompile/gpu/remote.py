"""Server side of OpenCL tuning over TVM RPC.

A machine with the GPU runs a TVM RPC server registered with the tracker; MetaSchedule's
candidates reach it through `qcompile.gpu.tuning.OpenCLRPCRunner`, which calls the remote
global function `qcompile.gpu.measure` (`tuning.measure_json`). The wheel's RPC server knows
nothing of it, so the server process must register it at start:

    tvm.rpc.Server(..., server_init_callback=qcompile.gpu.remote.server_init)

`qcompile rpc server` (qcompile.tuning.rpc.server_init) and `scripts/gpu_rpc_server.py` do
exactly that.
"""
from __future__ import annotations


def server_init() -> None:
    """Register `qcompile.gpu.measure` in this process (idempotent)."""
    import tvm

    from .tuning import MEASURE_FUNC, measure_json

    tvm.register_global_func(MEASURE_FUNC, measure_json, override=True)
