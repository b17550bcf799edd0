"""A tuning database directory: MetaSchedule's JSON database plus qcompile's safety layer.

Files in DIR:
  qcompile-tuning.json         header: which target (name, LLVM mcpu/mattr, family) and which
                               TVM the records were measured for; written atomically
  database_workload.json       MetaSchedule JSONDatabase: one workload a line
  database_tuning_record.json  MetaSchedule JSONDatabase: one measured candidate a line
  qcompile-progress.json       tasks whose search space ran out (so a rerun skips them)
  qcompile-measurements.jsonl  which RPC server measured what (information only)
  .qcompile-lock               flock: one tuning run at a time
  recovered/                   torn trailing lines cut off by a repair, kept for inspection

Safety (docs/tuning.md):
- A database made for another target or TVM is refused (TuningDatabaseError naming both).
- MetaSchedule appends one line per record (std::ofstream, which may issue several write()
  calls for a long line). A process killed mid-append leaves a *torn trailing line*; TVM's
  loader then fails on the whole file, and its next append would be glued to the fragment.
  `open_database` scans both files before TVM reads them: every complete line must parse and
  reference a known workload. A trailing fragment that looks like the start of a record is
  moved to `recovered/` and cut off (one truncate() call: the file is either as before or
  repaired); a complete last line missing only its newline gets the newline. Anything else
  (a bad line in the middle, a fragment that is not a record) is corruption: a clear error,
  and the files are left exactly as they were.
- Only a tuning run (holding the exclusive lock) modifies a database. A build that only
  reads never writes to it: if a tuning run holds the lock or the files need a repair, it
  loads a private copy of the complete lines.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import TuningDatabaseError
from ..util import tvm_version

HEADER = "qcompile-tuning.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
PROGRESS = "qcompile-progress.json"
MEASUREMENTS = "qcompile-measurements.jsonl"
LOCK = ".qcompile-lock"
RECOVERED = "recovered"
DB_VERSION = 1

# how a line of each file starts: a fragment that does not is not a torn record
_WORKLOAD_START = re.compile(rb'^\[("\d*("(,("[A-Za-z0-9+/=]*)?)?)?)?$')
_RECORD_START = re.compile(rb"^\[(\d+(,.*)?)?$", re.S)


def identity(spec) -> dict:
    """What must match for records to be reusable."""
    return {"target": spec.name, "mcpu": spec.mcpu, "mattr": sorted(spec.mattr),
            "family": spec.family, "tvm": tvm_version()}


def read_header(path: Path) -> dict | None:
    hp = Path(path) / HEADER
    if not hp.is_file():
        return None
    try:
        header = json.loads(hp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TuningDatabaseError(f"{hp} is corrupt ({err}); fix or delete the tuning database "
                                  f"directory {path}") from err
    if not isinstance(header, dict):
        raise TuningDatabaseError(f"{hp} is corrupt (not a JSON object); fix or delete the "
                                  f"tuning database directory {path}")
    return header


def mismatch(header: dict, spec) -> dict:
    """{field: (database value, wanted value)} for every identity field that differs."""
    want = identity(spec)
    have = {k: header.get(k) for k in want}
    if isinstance(have.get("mattr"), list):
        have["mattr"] = sorted(have["mattr"])
    return {k: (have[k], want[k]) for k in want if have[k] != want[k]}


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
    diff = mismatch(header, spec)
    if diff:
        parts = ", ".join(f"{k}: database {a!r} vs this build {b!r}" for k, (a, b) in diff.items())
        raise TuningDatabaseError(
            f"tuning database {path} was made for another configuration ({parts}); its records "
            "would not apply. Use a --tuning-db directory for this target (or delete this one).")


# ---- file scan and repair -------------------------------------------------------------------

@dataclasses.dataclass
class FileScan:
    path: Path
    lines: int = 0                 # complete, valid lines
    good_bytes: int = 0            # length of the valid prefix (ends with a newline)
    fragment: bytes = b""          # torn trailing fragment (to cut off)
    missing_newline: bool = False  # the last line is complete but has no newline

    @property
    def clean(self) -> bool:
        return not self.fragment and not self.missing_newline


def _valid_workload(obj) -> bool:
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], str))


def _valid_record(obj, n_workloads: int) -> bool:
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)
            and 0 <= obj[0] < n_workloads and isinstance(obj[1], list) and len(obj[1]) >= 1)


def scan_file(path: Path, kind: str, n_workloads: int = 0) -> FileScan:
    """Check every line of a JSONDatabase file; raise TuningDatabaseError on corruption."""
    scan = FileScan(Path(path))
    if not scan.path.exists():
        return scan
    data = scan.path.read_bytes()
    start_re = _WORKLOAD_START if kind == "workload" else _RECORD_START

    def valid(raw: bytes) -> bool:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return False
        return _valid_workload(obj) if kind == "workload" else _valid_record(obj, n_workloads)

    pos, lineno = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl < 0:  # trailing bytes without a newline
            tail = data[pos:]
            if valid(tail):
                scan.missing_newline = True
                scan.lines += 1
                scan.good_bytes = len(data)
            elif start_re.match(tail) and b"\n" not in tail:
                scan.fragment = tail
            else:
                raise _corrupt(scan.path, lineno, tail)
            break
        line = data[pos:nl]
        if not valid(line):
            raise _corrupt(scan.path, lineno, line)
        scan.lines += 1
        pos = nl + 1
        scan.good_bytes = pos
    return scan


def _corrupt(path: Path, lineno: int, line: bytes) -> TuningDatabaseError:
    shown = line[:80].decode("utf-8", "replace")
    return TuningDatabaseError(
        f"tuning database file {path} is corrupt at line {lineno} ({shown!r}...): not a "
        "MetaSchedule record, and not a torn last line that qcompile can cut off safely. The "
        "file was left untouched; repair it (each line must be one JSON record) or use another "
        "--tuning-db directory.")


def scan_database(path: Path) -> tuple[FileScan, FileScan]:
    wl = scan_file(Path(path) / WORKLOADS, "workload")
    rec = scan_file(Path(path) / RECORDS, "record", n_workloads=wl.lines)
    return wl, rec


def repair(scans: tuple[FileScan, ...]) -> list[str]:
    """Cut torn trailing fragments (kept in recovered/) and add missing final newlines.
    Call only while holding the exclusive lock. Returns what was done, for the log."""
    done = []
    for scan in scans:
        if scan.clean:
            continue
        if scan.fragment:
            rec_dir = scan.path.parent / RECOVERED
            rec_dir.mkdir(exist_ok=True)
            keep = rec_dir / f"{scan.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.torn"
            _write_durable(keep, scan.fragment)
            with open(scan.path, "r+b") as f:
                f.truncate(scan.good_bytes)
                f.flush()
                os.fsync(f.fileno())
            done.append(f"cut a torn last line ({len(scan.fragment)} bytes, from a run that was "
                        f"killed while writing) off {scan.path.name}; kept in {keep}")
        elif scan.missing_newline:
            with open(scan.path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            done.append(f"added the missing final newline to {scan.path.name}")
    return done


def _write_durable(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    _write_durable(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ---- lock -----------------------------------------------------------------------------------

class DatabaseLock:
    """flock on DIR/.qcompile-lock; released on close() or when the process dies (SIGKILL
    included), so a killed run never leaves a stale lock.

    Builds open a database *shared* (many readers at once), tuning opens it *exclusive*. This
    stays on the standard library's fcntl.flock (POSIX only) rather than the `filelock`
    package: its FileLock and SoftFileLock have only the exclusive mode, and its
    ReadWriteLock (3.21+), which has both, is built on SQLite transactions: a second, SQLite
    database file in every tuning-db directory, SQLite's requirements on the filesystem, and
    per-process reentrant holds by default (a second exclusive open in the same process would
    nest instead of being refused), for what flock gives in one kernel call: shared or
    exclusive, non-blocking, and dropped by the kernel with the descriptor. The holder's pid
    is written into the lock file for the "in use" message."""

    def __init__(self, path: Path, exclusive: bool):
        import fcntl

        self.path = Path(path) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            self.fd = None
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BlockingIOError(self.holder()) from err
            raise
        if exclusive:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid else "another process"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


# ---- open -----------------------------------------------------------------------------------

@dataclasses.dataclass
class OpenedDatabase:
    """A loaded database and how it was opened. `db` is a MetaSchedule Database."""
    db: object
    path: Path
    writable: bool
    lock: DatabaseLock | None = None
    repairs: list = dataclasses.field(default_factory=list)
    snapshot: bool = False

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _json_database(workloads: Path, records: Path, allow_missing: bool):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(str(workloads), str(records), allow_missing=allow_missing,
                                    module_equality="structural")


def _load_error(path: Path, err: Exception) -> TuningDatabaseError:
    text = str(err).strip()
    last = text.splitlines()[-1] if text else ""
    where = _diagnose(Path(path))
    return TuningDatabaseError(
        f"tuning database {path} cannot be read ({where or f'{type(err).__name__}: {last}'}); "
        "it is left untouched — repair or delete it, or use another --tuning-db")


def _diagnose(path: Path) -> str:
    """Which record TVM cannot load, and why (TVM's own message is often '(not rendered)').
    TuningRecord.from_json replays the record's trace on its workload."""
    from tvm.s_tir import meta_schedule as ms

    try:
        wls = [ms.database.Workload.from_json(json.loads(line))
               for line in (path / WORKLOADS).read_text().splitlines()]
    except Exception as err:  # noqa: BLE001 - diagnosing a failed load: any error is the answer
        return f"a workload in {WORKLOADS} cannot be decoded: {type(err).__name__}"
    try:
        lines = (path / RECORDS).read_text().splitlines() if (path / RECORDS).exists() else []
    except OSError:
        return ""
    for n, line in enumerate(lines, 1):
        idx, rec = json.loads(line)
        try:
            ms.database.TuningRecord.from_json(rec, wls[idx])
        except Exception as err:  # noqa: BLE001 - diagnosing a failed load: any error is the answer
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            hint = ""
            if "GetSBlock" in str(err) or "ScheduleError" in type(err).__name__ \
                    or "not rendered" in msg:
                hint = (": its schedule trace does not replay on its workload (a block it "
                        "names is missing: a record of a differently named twin of the "
                        "workload, or a kernel template or intrinsic that changed or is not "
                        "registered)")
            return (f"{RECORDS} line {n} (workload {idx}) cannot be loaded: "
                    f"{type(err).__name__}{(' ' + msg) if msg and 'not rendered' not in msg else ''}"
                    f"{hint}")
    return ""


def _ensure_dir_and_header(path: Path, spec, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise TuningDatabaseError(f"--tuning-db {path} is a file; it must be a directory")
    check_compatible(path, spec)
    if not path.exists():
        if not create:
            raise TuningDatabaseError(f"tuning database {path} does not exist")
        path.mkdir(parents=True)
    if read_header(path) is None:
        write_json_atomic(path / HEADER, {"qcompile_db_version": DB_VERSION, **identity(spec)})


def open_database(path: str | os.PathLike, spec, create: bool = True, writable: bool = False,
                  log=None, shipped: bool = False) -> OpenedDatabase:
    """Open (creating if allowed) the database at `path` for target `spec`.

    writable=True (tuning): takes the exclusive lock (a second tuning run on the same
    directory is refused), repairs a torn trailing line, and returns a JSONDatabase that
    appends in place. writable=False (building): never modifies existing files.
    shipped=True: a database in the package (read-only, no lock file, never created)."""
    path = Path(path)
    register_schedule_rules(spec)
    if shipped:
        if read_header(path) is None:
            raise TuningDatabaseError(f"shipped tuning database {path} has no {HEADER}")
        check_compatible(path, spec)
        with shipped_files(path) as plain:
            scans = scan_database(plain)
            try:
                return OpenedDatabase(_load_snapshot(plain, scans), path, False, None, [],
                                      True)
            except Exception as err:  # noqa: BLE001 - TVM raises several types; TuningDatabaseError
                raise _load_error(plain, err) from err
    _ensure_dir_and_header(path, spec, create)
    if writable:
        try:
            lock = DatabaseLock(path, exclusive=True)
        except BlockingIOError as held:
            raise TuningDatabaseError(
                f"tuning database {path} is in use by another tuning run ({held}); wait for it "
                "to finish or use another --tuning-db directory") from None
        try:
            scans = scan_database(path)
            repairs = repair(scans)
            for msg in repairs:
                if log:
                    log(f"qcompile: tuning database {path}: {msg}")
            db = _json_database(path / WORKLOADS, path / RECORDS, allow_missing=True)
        except TuningDatabaseError:
            lock.close()
            raise
        except Exception as err:  # noqa: BLE001 - TVM raises several types
            lock.close()
            raise _load_error(path, err) from err
        return OpenedDatabase(db, path, True, lock, repairs)
    # read-only
    try:
        lock = DatabaseLock(path, exclusive=False)
        busy = False
    except BlockingIOError:
        lock, busy = None, True
    except OSError:  # a read-only directory (e.g. shipped databases): nobody tunes into it
        lock, busy = None, False
    try:
        scans = scan_database(path)
        if busy or not all(s.clean for s in scans):
            return OpenedDatabase(_load_snapshot(path, scans), path, False, None, [], True)
        if not (path / WORKLOADS).exists() and not (path / RECORDS).exists():
            db = _empty_database()
        else:
            db = _json_database(path / WORKLOADS, path / RECORDS, allow_missing=True)
        return OpenedDatabase(db, path, False, None, [], False)
    except TuningDatabaseError:
        raise
    except Exception as err:  # noqa: BLE001 - TVM raises several types; TuningDatabaseError
        raise _load_error(path, err) from err
    finally:
        if lock is not None:
            lock.close()


@contextlib.contextmanager
def shipped_files(path: Path):
    """A directory with the plain JSONDatabase files of a shipped database, which may store
    them gzip-compressed (`database_workload.json.gz`: the serialized workloads compress
    ~14x)."""
    import gzip

    path = Path(path)
    if not any((path / (name + ".gz")).exists() for name in (WORKLOADS, RECORDS)):
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="qcompile-shipped-"))
    try:
        shutil.copy(path / HEADER, tmp / HEADER)
        for name in (WORKLOADS, RECORDS):
            if (path / (name + ".gz")).exists():
                with gzip.open(path / (name + ".gz"), "rb") as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            elif (path / name).exists():
                shutil.copy(path / name, tmp / name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_schedule_rules(spec) -> None:
    """Register qcompile's kernel-template rules and tensor intrinsics for the target's
    family: TVM replays every record's trace when it loads a database, and a trace that
    tensorizes with an unregistered intrinsic fails (docs/DEVELOPING.md, TVM 0.27 facts)."""
    import importlib

    module = {"x86": "qcompile.schedules.x86.schedule",
              "opencl": "qcompile.gpu.schedules.schedule"}.get(spec.family)
    if module is None:
        return
    try:
        register = getattr(importlib.import_module(module), "register_rules", None)
    except ImportError:
        return
    if register is not None:
        register()


def _empty_database():
    from tvm.s_tir import meta_schedule as ms

    return ms.database.MemoryDatabase(module_equality="structural")


def _load_snapshot(path: Path, scans: tuple[FileScan, FileScan]):
    """Load the complete lines of the files into memory (through a private copy)."""
    tmp = Path(tempfile.mkdtemp(prefix="qcompile-db-"))
    try:
        for scan, name in zip(scans, (WORKLOADS, RECORDS)):
            data = b""
            if scan.path.exists():
                with open(scan.path, "rb") as f:
                    data = f.read(scan.good_bytes)
                if scan.missing_newline:
                    data += b"\n"
            (tmp / name).write_bytes(data)
        return _json_database(tmp / WORKLOADS, tmp / RECORDS, allow_missing=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- queries --------------------------------------------------------------------------------

def task_workload(db, mod):
    """The database's Workload for `mod`, or None (never adds one)."""
    if not db.has_workload(mod):
        return None
    return db.commit_workload(mod)  # present already: returns it without writing


def records_of(db, mod) -> list:
    """Every record (valid or failed) measured for workload `mod`."""
    wl = task_workload(db, mod)
    if wl is None:
        return []
    return [r for r in db.get_all_tuning_records() if r.workload.same_as(wl)]


def best_seconds(db, mod) -> float | None:
    wl = task_workload(db, mod)
    if wl is None:
        return None
    top = db.get_top_k(wl, 1)
    if not top:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return sum(secs) / len(secs)


def tuned_workloads(db, tasks) -> list[bool]:
    """For each extracted task: does the database already hold a valid record for it?"""
    return [best_seconds(db, task.dispatched[0]) is not None for task in tasks]


def module_key(mod) -> str:
    """A stable key for a workload (structural hash, hex) used in qcompile-progress.json."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod):016x}"


def read_progress(path: Path) -> dict:
    p = Path(path) / PROGRESS
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}  # advisory only: a bad file means "nothing known to be exhausted"
    return data if isinstance(data, dict) else {}


def write_progress(path: Path, data: dict) -> None:
    write_json_atomic(Path(path) / PROGRESS, data)
