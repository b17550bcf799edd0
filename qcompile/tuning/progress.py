"""Tuning progress: a MetaSchedule measure callback that reports, after every measured batch,
the task's best latency, its trials done/left, overall trials, elapsed time and ETA (capped
by the time budget), and which RPC servers measured how much; and the summary table printed
at the end (`format_summary`).

On an interactive terminal the report is one `rich` progress bar redrawn in place (as the PTQ
passes' bars, qcompile.quantization.progress); anywhere else (a pipe, a log file, CI) it is
one plain line per batch, so logs stay readable and grep-able."""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import weakref


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


def interactive(stream) -> bool:
    """Whether `stream` gets redrawn progress bars: a terminal that rich treats as
    interactive (not TERM=dumb, not TTY_INTERACTIVE=0, which CI systems that fake a TTY or
    force colors can set). Otherwise progress is plain lines or nothing."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False
    from rich.console import Console

    return Console(file=stream).is_interactive


def _live_bar(stream):
    """The rich bar drawn on a terminal: overall trials, elapsed, ETA (ours: capped by the
    time budget) and the last batch's task line, cut with an ellipsis where the terminal is
    too narrow (the other columns keep their width)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn)
    from rich.table import Column
    from rich.text import Text

    class LineColumn(ProgressColumn):
        def render(self, task):
            return Text(task.fields["line"], no_wrap=True, overflow="ellipsis")

    def fixed():
        return Column(no_wrap=True)

    # no stdout/stderr redirection: nothing guarantees this bar is stopped before other
    # code prints, and a redirection left behind would outlive the run
    return Progress(TextColumn("tune", table_column=fixed()),
                    BarColumn(bar_width=30, table_column=fixed()),
                    MofNCompleteColumn(table_column=fixed()),
                    TextColumn("trials", table_column=fixed()),
                    TimeElapsedColumn(table_column=fixed()),
                    TextColumn("ETA {task.fields[eta]}", table_column=fixed()),
                    LineColumn(), console=Console(file=stream), refresh_per_second=2,
                    redirect_stdout=False, redirect_stderr=False)


def make_progress_callback(tasks: list[TaskInfo], stream=None, quiet: bool = False,
                           deadline: float | None = None, measurements=None):
    """`tasks`: the tasks passed to MetaSchedule, in order. `measurements`: a callable
    returning {server: count} for this run (RPC), or None. On a terminal the bar stops when
    every trial is measured, on `close()` (call it once MetaSchedule returns: a run stopped
    early by the time budget or Ctrl-C has no last batch), or at the latest when the
    callback is garbage collected or the interpreter exits."""
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
            self.bar = None
            if not quiet and interactive(self.stream):
                # the task's clock starts now; the bar is drawn from the first batch on, below
                # the tuner's own log lines
                self.bar = _live_bar(self.stream)
                self.bar_task = self.bar.add_task("tune", total=sum(x.budget for x in tasks),
                                                  eta="-", line="")

        def close(self):
            """Stop the terminal bar (leaving its last state on screen); idempotent."""
            if self.bar is not None:
                if self.bar.live.is_started:
                    self._stop()
                self.bar = None

        def _show(self, total_done, total, eta, line):
            self.bar.update(self.bar_task, completed=total_done, eta=fmt_duration(eta),
                            line=line)
            if not self.bar.live.is_started:
                self.bar.start()
                # the bar redraws from a thread: stop it even if nobody calls close()
                self._stop = weakref.finalize(self, self.bar.stop)
            if total_done >= total:
                self.close()

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
            line = (f"task {task_id + 1}/{len(tasks)} {t.name}: {self.done[task_id]} done, "
                    f"{left} left{errs}, best {fmt_seconds(self.best[task_id])}{servers}")
            if self.bar is not None:
                self._show(total_done, total, eta, line)
                return
            self.stream.write(f"[tune {total_done}/{total} trials | {fmt_duration(elapsed)} | "
                              f"ETA {fmt_duration(eta)}] {line}\n")
            self.stream.flush()

    return Progress()


def format_summary(rows: list[dict], seconds: float, stopped_by: str,
                   servers: dict | None = None) -> str:
    """The table printed at the end of a tuning run (rows: TuneSummary.per_task)."""
    from ..report import render_table

    cells = []
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
        cells.append([str(i + 1), name, f"{r['weight']:g}", str(r["trials"]),
                      str(r["total_trials"]),
                      fmt_seconds(best / 1e3 if best is not None else None),
                      fmt_seconds(weighted / 1e3 if weighted is not None else None),
                      r["status"]])
    lines = [render_table([("#", "right"), ("task", "left"), ("weight", "right"),
                           ("trials", "right"), ("total", "right"), ("best", "right"),
                           ("weighted", "right"), ("status", "left")], cells)]
    trials = sum(r["trials"] for r in rows)
    lines.append(f"{trials} trials in {fmt_duration(seconds)} ({stopped_by}); sum of tuned "
                 f"kernel latencies x weight: {fmt_seconds(est / 1e3)}"
                 + ("" if complete else " (tasks without a valid record not included)"))
    if servers:
        lines.append("measured on: " + ", ".join(f"{k}: {v}" for k, v in sorted(servers.items())))
    return "\n".join(lines)
