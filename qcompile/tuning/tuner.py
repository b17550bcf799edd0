"""Tune the fused PrimFuncs of a module with MetaSchedule (XGBoost cost model, evolutionary
search), recording into a qcompile tuning database.

Tasks whose workload already has a measured record in the database are skipped, so a second
build with the same database does no tuning. qcompile's kernel templates take part through
their `schedule_rule` block annotations (MetaSchedule's ApplyCustomRule).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

from . import database as dbm
from .progress import make_progress_callback


@dataclasses.dataclass
class TuneSummary:
    tasks: int = 0
    already_tuned: int = 0
    tuned_now: int = 0
    trials: int = 0
    seconds: float = 0.0
    per_task: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)


def extract_tasks(fused_mod, target):
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(fused_mod, target)


def tune(fused_mod, spec, target, db_path, trials: int, *, num_trials_per_iter: int | None = None,
         builder=None, runner="local", seed: int | None = None, progress: bool = True,
         max_trials_per_task: int | None = None):
    """Returns (database, TuneSummary)."""
    from tvm.s_tir import meta_schedule as ms

    db = dbm.open_database(db_path, spec)
    tasks = extract_tasks(fused_mod, target)
    done = dbm.tuned_workloads(db, tasks)
    todo = [t for t, d in zip(tasks, done) if not d]
    summary = TuneSummary(tasks=len(tasks), already_tuned=sum(done))
    if trials <= 0 or not todo:
        return db, summary
    per_task = max_trials_per_task or max(1, math.ceil(trials / len(todo)))
    per_iter = min(per_task, int(num_trials_per_iter or spec.tuning.get("num_trials_per_iter", 16)))
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=todo, work_dir=str(db_path), space="post-order-apply",
        strategy="evolutionary", seed=seed)
    names = [t.task_name for t in todo]
    if builder is None:
        from .builder import local_builder

        builder = local_builder()
    callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
    prog = make_progress_callback(names, [min(per_task, trials)] * len(todo), quiet=not progress)
    callbacks.append(prog)
    start = time.time()
    ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(db_path),
                  max_trials_global=trials, max_trials_per_task=per_task,
                  num_trials_per_iter=per_iter, builder=builder, runner=runner, database=db,
                  cost_model="xgb", measure_callbacks=callbacks, task_scheduler="gradient")
    summary.seconds = time.time() - start
    summary.tuned_now = len(todo)
    summary.per_task = prog.summary()
    summary.trials = sum(p["trials"] for p in summary.per_task)
    return db, summary
