"""Resumable search: MetaSchedule's evolutionary search that never measures a candidate the
database already holds, with a per-task trial budget and a deadline.

Why a wrapper: EvolutionarySearch seeds its population with the database's best records
(`PickBestFromDatabase`) but its set of "already measured" modules starts empty in every run
(TVM 0.27, evolutionary_search.cc: "TODO: add records from the database to avoid
re-measuring"). A resumed run could therefore send finished candidates to the builder and
runner again and append duplicate records. `ResumableSearch` replays the task's records at
`pre_tuning` (each record's trace applied to the workload gives exactly the module that was
measured; structural hashes match the candidate's `sch.mod`), and drops candidates whose
module is among them before they reach the builder.

It also gives each task its own remaining budget (per-task budget minus the records already
in the database), stops handing out candidates once the deadline (`--time-budget`) passes,
and reports a task whose search space ran out (`on_exhausted`) so a rerun can skip it.
"""
from __future__ import annotations

import time
from typing import Callable

# Evolutionary search settings (MetaSchedule's defaults; tests shrink the population)
DEFAULTS = {"population_size": 512, "init_measured_ratio": 0.2, "init_min_unmeasured": 50,
            "max_fail_count": 5, "genetic_num_iters": 4, "genetic_mutate_prob": 0.85,
            "genetic_max_fail_count": 10, "eps_greedy": 0.05}

# how many times in a row the inner search may return only database duplicates before the
# task is considered exhausted (the inner search also stops by itself after 5 empty rounds)
MAX_DUPLICATE_ROUNDS = 8


def module_hash(mod) -> int:
    import tvm_ffi

    return tvm_ffi.structural_hash(mod)


def measured_module_hashes(database, mod) -> set[int]:
    """Structural hashes of the modules of every record (valid or failed) of workload `mod`."""
    from tvm import s_tir

    from .database import records_of

    out = set()
    for rec in records_of(database, mod):
        try:
            sch = s_tir.Schedule(rec.workload.mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 - a trace that no longer replays cannot recur either
            continue
        out.add(module_hash(sch.mod))
    return out


def make_search(remaining: int, deadline: float | None = None,
                on_exhausted: Callable[[object, int], None] | None = None,
                stats: dict | None = None, inner: str = "evolutionary",
                stop: Callable[[], bool] | None = None,
                seeds: Callable[[object], list] | None = None, **evo):
    """A ResumableSearch for one task. `remaining`: new candidates it may send; `stats`: a
    dict it fills with counters (skipped_duplicates, sent, exhausted, deadline_hit);
    `inner`: "evolutionary" (tuning) or "replay-trace" (random sampling: deterministic for a
    seed with one search thread, which the tests use); `stop`: returns True when the run is
    interrupted (no new candidates); `seeds(mod)`: candidates to measure first (qcompile's
    default schedule of a kernel template, so tuning never ends slower than the untuned
    build, and evolution starts from it); `evo`: EvolutionarySearch settings."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    params = {**DEFAULTS, **evo}

    def new_inner():
        if inner == "replay-trace":
            return ms.search_strategy.ReplayTrace()
        return ms.search_strategy.EvolutionarySearch(**params)

    @derived_object
    class ResumableSearch(ms.search_strategy.PySearchStrategy):
        def __init__(self):
            self.inner = new_inner()
            self.remaining = int(remaining)
            self.stats = stats if stats is not None else {}
            for k in ("skipped_duplicates", "sent", "db_records"):
                self.stats.setdefault(k, 0)
            self.mod = None
            self.seen: set[int] = set()
            self.seeded = False

        def _initialize_with_tune_context(self, context) -> None:
            self.mod = context.mod
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None,
                       cost_model=None) -> None:
            self.inner.pre_tuning(max(1, min(int(max_trials), self.remaining)),
                                  num_trials_per_iter, design_spaces, database, cost_model)
            self.seen = measured_module_hashes(database, self.mod) if database is not None \
                else set()
            self.stats["db_records"] = len(self.seen)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            if self.stats["sent"] >= self.remaining:
                return None
            if stop is not None and stop():
                return None
            if deadline is not None and time.time() >= deadline:
                self.stats["deadline_hit"] = True
                return None
            first = self._seed_candidates()
            if first:
                self.stats["sent"] += len(first)
                return first
            for _ in range(MAX_DUPLICATE_ROUNDS):
                cands = self.inner.generate_measure_candidates()
                if cands is None:
                    break
                fresh = []
                for c in cands:
                    h = module_hash(c.sch.mod)
                    if h in self.seen:
                        self.stats["skipped_duplicates"] += 1
                        continue
                    self.seen.add(h)
                    fresh.append(c)
                fresh = fresh[: self.remaining - self.stats["sent"]]
                if fresh:
                    self.stats["sent"] += len(fresh)
                    return fresh
            # the search space ran out (or only re-proposes what was measured)
            self.stats["exhausted"] = True
            if on_exhausted is not None:
                on_exhausted(self.mod, self.stats["sent"])
            return None

        def _seed_candidates(self) -> list:
            if self.seeded or seeds is None:
                return []
            self.seeded = True
            try:
                cands = list(seeds(self.mod))
            except Exception:  # noqa: BLE001 - a seed is an optimization, never a failure
                return []
            out = []
            for c in cands[: self.remaining]:
                h = module_hash(c.sch.mod)
                if h not in self.seen:
                    self.seen.add(h)
                    out.append(c)
                else:
                    self.stats["skipped_duplicates"] += 1
            self.stats["seeded"] = len(out)
            return out

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return make_search(remaining, deadline, on_exhausted, stats, inner, stop, seeds,
                               **evo)

    return ResumableSearch()
