"""Tune the fused PrimFuncs of a module with MetaSchedule (XGBoost cost model, evolutionary
search), recording into a qcompile tuning database; resumable and time-boxed.

Budget: `trials` is the total for the model; each task gets `ceil(trials / tasks)`. A task's
records already in the database count against its budget, so rerunning the same command
after an interruption (Ctrl-C, SIGKILL, a crash) measures only what is missing, and never
re-measures a candidate the database holds (search.py). A task whose search space ran out
is remembered (qcompile-progress.json) and skipped. `time_budget` (seconds) stops handing
out new candidates when it runs out; measured candidates are always recorded.

Measurement: locally (MetaSchedule's LocalRunner), or on the servers registered with a TVM
RPC tracker under a key (`rpc=RPCSettings(...)`, one runner worker per server), or with the
builder/runner a caller passes (OpenCL). Candidates are always built here.
"""
from __future__ import annotations

import contextlib

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from . import database as dbm
from .progress import TaskInfo, format_summary, make_progress_callback


@dataclasses.dataclass
class TuneSummary:
    tasks: int = 0
    already_tuned: int = 0        # tasks with nothing left to do before this run
    tuned_now: int = 0            # tasks that measured candidates in this run
    trials: int = 0               # candidates measured in this run
    seconds: float = 0.0
    per_task: list = dataclasses.field(default_factory=list)
    records_before: int = 0       # records in the database when the run started
    skipped_duplicates: int = 0   # candidates not measured again: already in the database
    servers: dict = dataclasses.field(default_factory=dict)   # RPC server -> measurements
    stopped_by: str = ""
    time_budget: float | None = None
    repairs: list = dataclasses.field(default_factory=list)
    rpc: str | None = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def table(self) -> str:
        return format_summary(self.per_task, self.seconds, self.stopped_by, self.servers)


def prepare_metaschedule_logging() -> None:
    """Call before any MetaSchedule tuning entry point (`tune_tasks`, `tune_tir`).

    MetaSchedule rebuilds its logging config from the names of the handlers already on its
    logger and fails on an unnamed one (`'NoneType' object has no attribute 'format'`): one a
    test harness or an embedding application attached, or one an earlier run left. TVM's
    dictConfig replaces them anyway, so drop those first."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    for handler in [h for h in ms_logger.handlers if h.get_name() is None]:
        ms_logger.removeHandler(handler)


class TuningInterrupted(KeyboardInterrupt):
    """Ctrl-C during tuning: the candidates in flight were finished and recorded."""

    def __init__(self, summary: "TuneSummary"):
        super().__init__("tuning interrupted")
        self.summary = summary


def extract_tasks(fused_mod, target):
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(fused_mod, target)


def per_task_budget(trials: int, n_tasks: int, max_trials_per_task: int | None = None) -> int:
    if max_trials_per_task:
        return int(max_trials_per_task)
    return max(1, math.ceil(trials / max(n_tasks, 1)))


def tune(fused_mod, spec, target, db_path, trials: int, *, time_budget: float | None = None,
         rpc=None, builder=None, runner="local", seed: int | None = None,
         progress: bool = True, num_trials_per_iter: int | None = None,
         max_trials_per_task: int | None = None, search: dict | None = None, stream=None,
         tasks_out: list | None = None, skip_task=None):
    """Returns (database, TuneSummary). `database` is a MetaSchedule Database holding every
    record (the run's and the earlier ones); the directory is unlocked on return.

    rpc: qcompile.tuning.rpc.RPCSettings (measure on the tracker's servers) or None.
    search: overrides of the evolutionary search settings (search.DEFAULTS).
    tasks_out: a list that receives the extracted tasks (scripts/tune_pretuned.py).
    skip_task: a function of a task's module returning why it is not tuned in this run, or
    None to tune it (scripts/tune_pretuned.py --missing-only)."""
    stream = stream or sys.stderr
    # QCOMPILE_TUNING_SEARCH='{"population_size": 64}': search settings for tests/experiments
    search = {**json.loads(os.environ.get("QCOMPILE_TUNING_SEARCH") or "{}"), **(search or {})}
    log = (lambda m: print(m, file=stream, flush=True)) if progress else None
    db_path = Path(db_path)
    tasks = extract_tasks(fused_mod, target)
    if tasks_out is not None:
        tasks_out.extend(tasks)
    summary = TuneSummary(tasks=len(tasks), time_budget=time_budget,
                          rpc=f"{rpc.address} key {rpc.key}" if rpc is not None else None)
    if trials <= 0 or not tasks:
        opened = dbm.open_database(db_path, spec, writable=False)
        summary.already_tuned = sum(dbm.tuned_workloads(opened.db, tasks))
        summary.stopped_by = "no trials requested"
        return opened.db, summary

    opened = dbm.open_database(db_path, spec, writable=True, log=log)
    try:
        return opened.db, _tune_locked(opened, tasks, spec, target, trials, summary, log, stream,
                                       time_budget=time_budget, rpc=rpc, builder=builder,
                                       runner=runner, seed=seed, progress=progress,
                                       num_trials_per_iter=num_trials_per_iter,
                                       max_trials_per_task=max_trials_per_task,
                                       search=search or {}, skip_task=skip_task)
    finally:
        opened.close()


def _tune_locked(opened, tasks, spec, target, trials, summary, log, stream, *, time_budget, rpc,
                 builder, runner, seed, progress, num_trials_per_iter, max_trials_per_task,
                 search, skip_task=None):
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    from .search import make_search

    db, db_path = opened.db, opened.path
    summary.repairs = list(opened.repairs)
    start = time.time()
    deadline = start + time_budget if time_budget else None
    budget = per_task_budget(trials, len(tasks), max_trials_per_task)
    progress_state = dbm.read_progress(db_path)
    exhausted = progress_state.setdefault("exhausted", {})
    summary.records_before = len(db.get_all_tuning_records())

    infos = []
    for task in tasks:
        mod = task.dispatched[0]
        recs = dbm.records_of(db, mod)
        info = TaskInfo(task.task_name, float(task.weight), 0, len(recs),
                        dbm.best_seconds(db, mod))
        why = skip_task(mod) if skip_task is not None else None
        if why:
            info.skipped = why
        elif dbm.module_key(mod) in exhausted:
            info.skipped = "search space exhausted earlier"
        elif len(recs) >= budget:
            info.skipped = "done"
        else:
            info.budget = budget - len(recs)
        infos.append(info)
    todo = [i for i, info in enumerate(infos) if not info.skipped]
    summary.already_tuned = len(tasks) - len(todo)
    if not todo:
        summary.stopped_by = "nothing left to tune"
        summary.per_task = _rows(tasks, infos, [0] * len(tasks), db, {})
        return summary

    # measurement (RPC: check the fleet first, before the slow task setup)
    measurements = None
    log_path = db_path / dbm.MEASUREMENTS
    if rpc is not None and builder is None and (runner is None or runner == "local"):
        from . import rpc as rpcm

        n_servers = rpcm.check_fleet(rpc, spec.required_flags, log=log)
        offset = log_path.stat().st_size if log_path.exists() else 0
        runner = rpcm.make_runner(rpc, n_servers, log_path, spec.required_flags)
        if log:
            log(f"qcompile: measuring on {n_servers} RPC server(s) with key {rpc.key!r} via "
                f"tracker {rpc.address}")
        seen_counts = {"offset": offset, "counts": {}}

        def measurements():
            counts, seen_counts["offset"] = rpcm.read_measurements(log_path, seen_counts["offset"])
            for k, v in counts.items():
                seen_counts["counts"][k] = seen_counts["counts"].get(k, 0) + v
            return dict(seen_counts["counts"])

    prepare_metaschedule_logging()
    names = [t.task_name for t in tasks]
    loggers = get_loggers_from_work_dir(str(db_path), names)
    seeds = fork_seed(seed, n=len(tasks))

    by_key = {dbm.module_key(tasks[i].dispatched[0]): infos[i] for i in todo}

    def on_exhausted(mod, sent):
        """The task's search space ran out: remember it so a rerun does not search again."""
        key = dbm.module_key(mod)
        info = by_key.get(key)
        exhausted[key] = {"task": info.name if info else "?",
                          "records": (info.prior_records if info else 0) + sent}
        dbm.write_progress(db_path, progress_state)

    stats = {i: {} for i in todo}
    evo = dict(search)
    inner = evo.pop("inner", "evolutionary")
    per_iter = int(evo.pop("num_trials_per_iter", None) or num_trials_per_iter
                   or spec.tuning.get("num_trials_per_iter", 16))
    interrupted = {"flag": False}
    first = None if evo.pop("no_default_seed", False) else default_schedule_seeds(spec)
    ctxs, weights = [], []
    for i in todo:
        task = tasks[i]
        # Tune the database's own copy of a known workload: MetaSchedule matches workloads by
        # structural equality, which ignores block names, but a trace names blocks; a trace
        # recorded on a differently named twin (e.g. from another model, or an earlier
        # pipeline) would not replay on the stored workload and TVM would refuse to load the
        # whole database.
        wl = dbm.task_workload(db, task.dispatched[0])
        mod = wl.mod if wl is not None else task.dispatched[0]
        strategy = make_search(infos[i].budget, deadline, on_exhausted, stats[i], inner,
                               lambda: interrupted["flag"], first, **evo)
        ctxs.append(ms.TuneContext(mod=mod, target=task.target,
                                   space_generator="post-order-apply",
                                   search_strategy=strategy, task_name=task.task_name,
                                   logger=loggers[i], rand_state=seeds[i],
                                   num_threads="physical").clone())
        weights.append(float(task.weight))

    if builder is None:
        from .builder import local_builder

        builder = local_builder()

    per_iter = max(1, min(per_iter, max(infos[i].budget for i in todo)))
    task_infos = [infos[i] for i in todo]
    prog = make_progress_callback(task_infos, stream=stream, quiet=not progress,
                                  deadline=deadline, measurements=measurements)
    # MetaSchedule's default callbacks, with AddToDatabase replaced by record_callback (which
    # does not record candidates that failed because the run was being interrupted)
    callbacks = [record_callback(db, ctxs, lambda: interrupted["flag"]),
                 ms.measure_callback.RemoveBuildArtifact(),
                 ms.measure_callback.UpdateCostModel(), prog]
    if log:
        left = sum(x.budget for x in task_infos)
        resumed = sum(x.prior_records for x in task_infos)
        log(f"qcompile: tuning {len(todo)}/{len(tasks)} tasks, {left} trials"
            + (f" (resuming: {resumed} records already measured)" if resumed else "")
            + (f", time budget {time_budget:.0f}s" if time_budget else ""))
    with _graceful_sigint(interrupted, log), contextlib.closing(prog):
        ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(db_path),
                      max_trials_global=sum(x.budget for x in task_infos),
                      max_trials_per_task=max(x.budget for x in task_infos),
                      num_trials_per_iter=per_iter, builder=builder, runner=runner,
                      database=db, cost_model="xgb", measure_callbacks=callbacks,
                      task_scheduler="gradient")
    summary.seconds = time.time() - start
    done = [0] * len(tasks)
    for j, i in enumerate(todo):
        done[i] = prog.done[j]
    summary.trials = sum(done)
    summary.tuned_now = sum(1 for i in todo if done[i] > 0)
    summary.skipped_duplicates = sum(s.get("skipped_duplicates", 0) for s in stats.values())
    if measurements is not None:
        summary.servers = measurements()
    if interrupted["flag"]:
        summary.stopped_by = "interrupted"
    elif any(s.get("deadline_hit") for s in stats.values()):
        summary.stopped_by = "time budget reached"
    elif all(s.get("exhausted") for s in stats.values()):
        summary.stopped_by = "search spaces exhausted"
    else:
        summary.stopped_by = "trial budget reached"
    summary.per_task = _rows(tasks, infos, done, db, stats)
    return summary


def _rows(tasks, infos, done, db, stats) -> list[dict]:
    rows = []
    for i, (task, info) in enumerate(zip(tasks, infos)):
        mod = task.dispatched[0]
        best = dbm.best_seconds(db, mod)
        st = stats.get(i, {})
        if info.skipped:
            status = info.skipped
        elif st.get("exhausted"):
            status = "search space exhausted"
        elif done[i] >= info.budget:
            status = "done"
        elif st.get("deadline_hit"):
            status = "stopped: time budget"
        else:
            status = f"{info.budget - done[i]} left"
        rows.append({"task": task.task_name, "weight": float(task.weight), "trials": done[i],
                     "total_trials": len(dbm.records_of(db, mod)),
                     "best_ms": best * 1e3 if best is not None else None,
                     "prior_best_ms": info.prior_best * 1e3 if info.prior_best else None,
                     "skipped_duplicates": st.get("skipped_duplicates", 0),
                     "default_schedule_seeded": bool(st.get("seeded")), "status": status})
    return rows


def record_callback(db, ctxs, interrupted):
    """MetaSchedule's AddToDatabase in Python: one record per measured candidate (failed ones
    with run_secs 1e10, as MetaSchedule does, so they are not tried again) — except, once the
    run is being interrupted, failures, which are then the interruption's doing."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class RecordToDatabase(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            ctx = ctxs[task_id]
            workload = db.commit_workload(ctx.mod)
            for cand, b, r in zip(measure_candidates, builder_results, runner_results):
                ok = b.error_msg is None and r.error_msg is None and r.run_secs
                if not ok and interrupted():
                    continue
                run_secs = [float(x) for x in r.run_secs] if r.run_secs else [1e10]
                db.commit_tuning_record(ms.database.TuningRecord(
                    cand.sch.trace, workload, run_secs, ctx.target, cand.args_info))

    return RecordToDatabase()


class _graceful_sigint:
    """First Ctrl-C: stop handing out candidates, finish and record those in flight. Second
    Ctrl-C: the usual KeyboardInterrupt. (Only in the main thread.)"""

    def __init__(self, flag: dict, log):
        self.flag, self.log, self.old = flag, log, None

    def _handler(self, signum, frame):
        if self.flag["flag"]:
            raise KeyboardInterrupt
        self.flag["flag"] = True
        msg = ("qcompile: interrupted: finishing the candidates in flight and saving them "
               "(Ctrl-C again to abort now; the database stays valid either way)")
        if self.log:
            self.log(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def default_schedule_seeds(spec):
    """seeds(mod) -> [MeasureCandidate]: for a kernel built from one of qcompile's templates
    (schedules/x86), its deterministic default schedule, measured first like any candidate
    (locally or on the RPC servers). Tuning then never ends slower than the untuned build,
    and the evolutionary search starts from it (it picks the database's best)."""
    if spec.family != "x86":
        return None
    try:
        from ..schedules.x86 import schedule as x86s
    except ImportError:
        return None
    if not hasattr(x86s, "has_qcompile_block") or not hasattr(x86s, "schedule_fused"):
        return None

    def seeds(mod):
        from tvm import s_tir
        from tvm.s_tir import meta_schedule as ms

        func = mod["main"]
        if not x86s.has_qcompile_block(func):
            return []
        sch = s_tir.Schedule(mod)
        x86s.schedule_fused(sch, tune=False)
        return [ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(func))]

    return seeds
