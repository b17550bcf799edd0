"""A tuning database directory: MetaSchedule's JSON database plus a qcompile header.

`DIR/qcompile-tuning.json` records which target (name, LLVM mcpu/mattr) and which TVM
version the records were measured for. Opening a database made for another target or TVM
refuses with a TuningDatabaseError that names both; a corrupt file is reported, never
overwritten.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TuningDatabaseError
from ..util import tvm_version

HEADER = "qcompile-tuning.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
DB_VERSION = 1


def identity(spec) -> dict:
    """What must match for records to be reusable."""
    return {"target": spec.name, "mcpu": spec.mcpu, "mattr": sorted(spec.mattr),
            "family": spec.family, "tvm": tvm_version()}


def read_header(path: Path) -> dict | None:
    hp = Path(path) / HEADER
    if not hp.is_file():
        return None
    try:
        return json.loads(hp.read_text())
    except json.JSONDecodeError as err:
        raise TuningDatabaseError(f"{hp} is corrupt ({err}); fix or delete the tuning database "
                                  f"directory {path}") from err


def check_compatible(path: str | os.PathLike, spec) -> None:
    path = Path(path)
    header = read_header(path)
    has_records = (path / RECORDS).exists() or (path / WORKLOADS).exists()
    if header is None:
        if has_records:
            raise TuningDatabaseError(
                f"{path} holds MetaSchedule records but no {HEADER}: qcompile cannot tell which "
                "target or TVM version they were measured for. Use a new --tuning-db directory.")
        return
    want = identity(spec)
    have = {k: header.get(k) for k in want}
    if have.get("mattr") is not None:
        have["mattr"] = sorted(have["mattr"])
    diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if diff:
        parts = ", ".join(f"{k}: database {a!r} vs this build {b!r}" for k, (a, b) in diff.items())
        raise TuningDatabaseError(
            f"tuning database {path} was made for another configuration ({parts}); its records "
            "would not apply. Use a --tuning-db directory for this target (or delete this one).")


def open_database(path: str | os.PathLike, spec, create: bool = True):
    """Open (creating if allowed) the database at `path` for target `spec`."""
    from tvm.s_tir import meta_schedule as ms

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TuningDatabaseError(f"--tuning-db {path} is a file; it must be a directory")
    check_compatible(path, spec)
    if not path.exists():
        if not create:
            raise TuningDatabaseError(f"tuning database {path} does not exist")
        path.mkdir(parents=True)
    if read_header(path) is None:
        tmp = path / (HEADER + ".tmp")
        tmp.write_text(json.dumps({"qcompile_db_version": DB_VERSION, **identity(spec)},
                                  indent=2) + "\n")
        os.replace(tmp, path / HEADER)
    try:
        return ms.database.JSONDatabase(str(path / WORKLOADS), str(path / RECORDS),
                                        allow_missing=True, module_equality="structural")
    except Exception as err:
        raise TuningDatabaseError(
            f"tuning database {path} cannot be read ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); it is left "
            "untouched — repair or delete it, or use another --tuning-db") from err


def tuned_workloads(db, tasks) -> list[bool]:
    """For each extracted task: does the database already hold a measured record for it?"""
    out = []
    for task in tasks:
        mod = task.dispatched[0]
        found = False
        if db.has_workload(mod):
            found = len(db.get_top_k(db.commit_workload(mod), 1)) > 0
        out.append(found)
    return out
