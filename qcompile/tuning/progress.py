"""A MetaSchedule measure callback that prints tuning progress: per task best latency,
trials done/left and an ETA, and a summary table at the end."""
from __future__ import annotations

import sys
import time


def make_progress_callback(task_names: list[str], trials_per_task: list[int], stream=None,
                           quiet: bool = False):
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.start = time.time()
            self.done = [0] * len(task_names)
            self.best = [float("inf")] * len(task_names)
            self.stream = stream or sys.stderr

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            for r in runner_results:
                self.done[task_id] += 1
                if r.error_msg is None and r.run_secs:
                    sec = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                    self.best[task_id] = min(self.best[task_id], sec)
            total_done = sum(self.done)
            total = sum(trials_per_task)
            elapsed = time.time() - self.start
            eta = elapsed / max(total_done, 1) * max(total - total_done, 0)
            best = self.best[task_id]
            if quiet:
                return
            if best == float("inf"):
                best_s = "no valid run yet"
            else:
                best_s = f"{best * 1e3:.3f} ms" if best >= 1e-3 else f"{best * 1e6:.2f} us"
            self.stream.write(
                f"[tune {total_done}/{total} trials, {elapsed:.0f}s, ETA {eta:.0f}s] "
                f"task {task_id} {task_names[task_id]}: {self.done[task_id]} trials, "
                f"best {best_s}\n")
            self.stream.flush()

        def summary(self) -> list[dict]:
            return [{"task": n, "trials": d, "best_ms": (b * 1e3 if b < float("inf") else None)}
                    for n, d, b in zip(task_names, self.done, self.best)]

    return Progress()
