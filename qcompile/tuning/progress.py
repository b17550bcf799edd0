"""Tuning progress: a MetaSchedule measure callback that prints, after every measured batch,
the task's best latency, its trials done/left, overall trials, elapsed time and ETA (capped
by the time budget), and which RPC servers measured how much; and the summary table printed
at the end (`format_summary`)."""
from __future__ import annotations

import dataclasses
import math
import sys
import time


@dataclasses.dataclass
class TaskInfo:
    name: str
    weight: float
    budget: int                  # trials this run may measure for the task
    prior_records: int = 0       # records already in the database
    prior_best: float | None = None   # seconds, best valid record before this run
    skipped: str = ""            # why the task is not tuned in this run ("" if it is)


def fmt_seconds(sec: float | None) -> str:
    if sec is None or not math.isfinite(sec):
        return "-"
    if sec >= 1e-3:
        return f"{sec * 1e3:.3f} ms"
    return f"{sec * 1e6:.2f} us"


def fmt_duration(sec: float) -> str:
    sec = max(0, int(round(sec)))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


def make_progress_callback(tasks: list[TaskInfo], stream=None, quiet: bool = False,
                           deadline: float | None = None, measurements=None):
    """`tasks`: the tasks passed to MetaSchedule, in order. `measurements`: a callable
    returning {server: count} for this run (RPC), or None."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.start = time.time()
            self.done = [0] * len(tasks)
            self.errors = [0] * len(tasks)
            self.best = [t.prior_best if t.prior_best is not None else math.inf for t in tasks]
            self.stream = stream or sys.stderr

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            for b, r in zip(builder_results, runner_results):
                self.done[task_id] += 1
                if b.error_msg is None and r.error_msg is None and r.run_secs:
                    sec = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                    self.best[task_id] = min(self.best[task_id], sec)
                else:
                    self.errors[task_id] += 1
            if quiet:
                return
            t = tasks[task_id]
            total_done, total = sum(self.done), sum(x.budget for x in tasks)
            now = time.time()
            elapsed = now - self.start
            eta = elapsed / max(total_done, 1) * max(total - total_done, 0)
            if deadline is not None:
                eta = min(eta, max(deadline - now, 0))
            left = max(t.budget - self.done[task_id], 0)
            errs = f", {self.errors[task_id]} failed" if self.errors[task_id] else ""
            servers = ""
            if measurements is not None:
                counts = measurements()
                if counts:
                    servers = " | measured on " + ", ".join(
                        f"{k} {v}" for k, v in sorted(counts.items()))
            self.stream.write(
                f"[tune {total_done}/{total} trials | {fmt_duration(elapsed)} | ETA "
                f"{fmt_duration(eta)}] task {task_id + 1}/{len(tasks)} {t.name}: "
                f"{self.done[task_id]} done, {left} left{errs}, best "
                f"{fmt_seconds(self.best[task_id])}{servers}\n")
            self.stream.flush()

    return Progress()


def format_summary(rows: list[dict], seconds: float, stopped_by: str,
                   servers: dict | None = None) -> str:
    """The table printed at the end of a tuning run (rows: TuneSummary.per_task)."""
    head = f"{'#':>3s}  {'task':40s} {'weight':>6s} {'trials':>7s} {'total':>6s} " \
           f"{'best':>11s} {'weighted':>11s}  status"
    lines = [head, "-" * len(head)]
    est = 0.0
    complete = True
    for i, r in enumerate(rows):
        best = r.get("best_ms")
        weighted = best * r["weight"] if best is not None else None
        if weighted is None:
            complete = False
        else:
            est += weighted
        name = r["task"] if len(r["task"]) <= 40 else r["task"][:37] + "..."
        lines.append(
            f"{i + 1:3d}  {name:40s} {r['weight']:6g} {r['trials']:7d} {r['total_trials']:6d} "
            f"{fmt_seconds(best / 1e3 if best is not None else None):>11s} "
            f"{fmt_seconds(weighted / 1e3 if weighted is not None else None):>11s}  "
            f"{r['status']}")
    lines.append("-" * len(head))
    trials = sum(r["trials"] for r in rows)
    lines.append(f"{trials} trials in {fmt_duration(seconds)} ({stopped_by}); sum of tuned "
                 f"kernel latencies x weight: {fmt_seconds(est / 1e3)}"
                 + ("" if complete else " (tasks without a valid record not included)"))
    if servers:
        lines.append("measured on: " + ", ".join(f"{k}: {v}" for k, v in sorted(servers.items())))
    return "\n".join(lines)
