"""Pre-tuned databases shipped in the package (like TVM's TopHub), used automatically.

`qcompile/pretuned/<target>/` is an ordinary qcompile tuning database (header, MetaSchedule
workload + record files) measured on a machine of that target for the benchmark models, plus
`qcompile-pretuned.json` describing where and how (models, trials, CPU, versions). A build
whose target identity (name, mcpu, mattr, family, TVM version: the database header) matches
uses its records for every kernel whose workload it holds, so a first build is fast without
tuning. The user's own `--tuning-db` comes first (its records were measured on the user's
machine); the shipped one fills the gaps. `--no-pretuned` turns it off.

A shipped database is only ever read. `QCOMPILE_PRETUNED_DIR` points to another root (tests,
or a site-wide collection laid out the same way).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import database as dbm

INFO = "qcompile-pretuned.json"


def root() -> Path:
    env = os.environ.get("QCOMPILE_PRETUNED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "pretuned"


def lookup(spec) -> tuple[Path | None, str]:
    """(database directory, "") when a shipped database matches `spec`, else (None, reason)."""
    d = root() / spec.name
    if not (d / dbm.HEADER).is_file():
        note = ""
        for name in ("NOT-MEASURED.md", "README.md"):
            if (d / name).is_file():
                note = f" ({d / name})"
                break
        return None, f"no pre-tuned database is shipped for target {spec.name!r}{note}"
    try:
        header = dbm.read_header(d)
    except dbm.TuningDatabaseError as err:
        return None, f"shipped database {d} is unreadable: {err}"
    diff = dbm.mismatch(header, spec)
    if diff:
        parts = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
        return None, f"shipped database {d} was made for another configuration ({parts})"
    return d, ""


def info(path: Path) -> dict:
    p = Path(path) / INFO
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:
        return {}


def open_pretuned(spec):
    """(MetaSchedule database or None, description dict)."""
    path, reason = lookup(spec)
    if path is None:
        return None, {"used": False, "reason": reason}
    try:
        opened = dbm.open_database(path, spec, create=False, writable=False, shipped=True)
    except dbm.TuningDatabaseError as err:
        return None, {"used": False, "reason": f"shipped database {path} unusable: {err}"}
    return opened.db, {"used": True, "path": str(path), **{k: v for k, v in info(path).items()
                                                          if k in ("models", "cpu", "trials")}}


def coverage(db, tasks) -> int:
    """How many of the extracted tasks have a valid record in `db`."""
    return sum(dbm.tuned_workloads(db, tasks)) if db is not None else 0


def combine(user_db, spec, enabled: bool = True, fused_mod=None, target=None):
    """The database a build applies: the user's first, then the shipped one for the target.
    Returns (database or None, description for model.json)."""
    if not enabled:
        return user_db, {"used": False, "reason": "--no-pretuned"}
    shipped, desc = open_pretuned(spec)
    if shipped is None:
        return user_db, desc
    if fused_mod is not None and target is not None:
        from .tuner import extract_tasks

        tasks = extract_tasks(fused_mod, target)
        desc["tasks"] = len(tasks)
        desc["tasks_covered"] = coverage(shipped, tasks)
        if user_db is not None:
            user_cov = dbm.tuned_workloads(user_db, tasks)
            shipped_cov = dbm.tuned_workloads(shipped, tasks)
            desc["tasks_from_pretuned"] = sum(1 for u, s in zip(user_cov, shipped_cov)
                                              if s and not u)
        else:
            desc["tasks_from_pretuned"] = desc["tasks_covered"]
        if desc["tasks_covered"] == 0:
            desc["used"] = False
            desc["reason"] = "the shipped database holds none of this model's kernels"
            return user_db, desc
    if user_db is None:
        return shipped, desc
    from tvm.s_tir import meta_schedule as ms

    return ms.database.OrderedUnionDatabase(user_db, shipped), desc
