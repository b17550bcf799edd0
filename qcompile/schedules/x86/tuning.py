"""MetaSchedule helpers for the fused int8 kernels.

`seed_with_default(database, func, target)` commits the deterministic default schedule of a
fused kernel, measured, as a tuning record: the evolutionary search then starts from it
("pick best from database") instead of from random tile sizes only, and a short tuning run
can never end up slower than the untuned build. `tune_kernel` runs MetaSchedule (XGBoost
cost model, evolutionary search) on one fused PrimFunc with that seed.

The custom rules and the intrinsics must be registered (`schedule.register_rules()`, done
here) in every process that tunes, or that opens a database whose traces name them.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx

from . import schedule


def normalize(func: tirx.PrimFunc) -> tvm.IRModule:
    """The workload module MetaSchedule's `tune_tir` makes of a PrimFunc."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def _random_args(func: tirx.PrimFunc, rng) -> list:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [_rand(tuple(int(s) for s in info.shape), str(info.dtype), rng)
            for info in ArgInfo.from_prim_func(func)]


def _rand(shape, dtype, rng):
    if dtype.startswith("float"):
        return tvm.runtime.tensor(rng.random(shape).astype(dtype))
    info = np.iinfo(dtype)
    return tvm.runtime.tensor(rng.integers(max(info.min, -128), min(info.max, 255) + 1,
                                           shape).astype(dtype))


def seed_with_default(database, func: tirx.PrimFunc, target, number: int = 5,
                      repeat: int = 3) -> float:
    """Commit the default schedule of `func` (a fused PrimFunc with a qcompile block) to
    `database` with its measured run time; returns that time in seconds."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    schedule.register_rules()
    mod = normalize(func)
    sch = tvm.s_tir.Schedule(mod)
    schedule.schedule_fused(sch, tune=False)
    from qcompile.tuning.builder import tir_pipeline

    ex = tvm.compile(sch.mod, target=target, tir_pipeline=tir_pipeline(target))
    rt = ex.jit()
    args = _random_args(mod["main"], np.random.default_rng(0))
    timer = rt.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    secs = min(timer(*args).results)
    workload = database.commit_workload(mod)
    database.commit_tuning_record(TuningRecord(
        sch.trace, workload, [secs], tvm.target.Target(target) if isinstance(target, str)
        else target, ArgInfo.from_prim_func(mod["main"])))
    return secs


def tune_kernel(func: tirx.PrimFunc, target, work_dir: str, trials: int,
                seed_default: bool = True, num_trials_per_iter: int = 16, seed: int = 0,
                builder=None, runner=None):
    """MetaSchedule-tune one fused kernel; returns (best schedule or None, database)."""
    from tvm.s_tir import meta_schedule as ms

    from qcompile.tuning.tuner import prepare_metaschedule_logging

    schedule.register_rules()
    prepare_metaschedule_logging()
    database = ms.database.JSONDatabase(work_dir=work_dir)
    if seed_default:
        seed_with_default(database, func, target)
    ms.tir_integration.tune_tir(
        func, target, work_dir, max_trials_global=trials,
        num_trials_per_iter=min(trials, num_trials_per_iter), database=database, seed=seed,
        builder=builder or ms.builder.LocalBuilder(timeout_sec=300),
        runner=runner or ms.runner.LocalRunner(timeout_sec=120))
    return ms.tir_integration.compile_tir(database, func, target), database
