"""Pre-tuned databases shipped in the package (like TVM's TopHub), used automatically.

`qcompile/pretuned/<target>/` is an ordinary qcompile tuning database (header, MetaSchedule
workload + record files) measured on a machine of that target for the benchmark models, plus
`qcompile-pretuned.json` describing where and how (models, trials, CPU, versions). A build
whose target identity (name, mcpu, mattr, family, TVM version: the database header) matches
uses its records for every kernel whose workload it holds, so a first build is fast without
tuning. The user's own `--tuning-db` comes first (its records were measured on the user's
machine); the shipped one fills the gaps. `--no-pretuned` turns it off.

Schedules are tuned for a micro-architecture, not just an ISA: records measured on an Ice
Lake Xeon made ResNet-50 ~4% slower on an AMD Zen 4 than the untuned templates (per-layer
profile, 2026-12-04). A target may therefore have several databases, one per CPU they were
measured on: `<target>/` and `<target>@<vendor>-<family>-<model>/` (e.g. `avx512-vnni@amd-25-17`
for Zen 4), each with the measuring CPU's `cpu_id` in its `qcompile-pretuned.json`. A build
for this machine picks the one measured on the closest CPU (same model, then family, then
vendor; `<target>/` on a tie); a cross build (--cross, --rpc) takes `<target>/`. model.json
says which one and how close (`pretuned.cpu_match`). Records measured on a CPU of another
vendor are not applied (the build says so): Ice Lake records made 23 of 27 kernels slower
on a Zen 4, Sapphire Rapids avx2 records made ResNet-50's NNCF build 1.11x slower on a Zen 3
(1.34x -> 1.49x OpenVINO's time, 2026-12-07).

A shipped database is only ever read. `QCOMPILE_PRETUNED_DIR` points to another root (tests,
or a site-wide collection laid out the same way).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import database as dbm

INFO = "qcompile-pretuned.json"
CPU_SEP = "@"
_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
MATCH = {3: "same CPU model", 2: "same CPU family", 1: "same CPU vendor", 0: "another CPU"}


def cpu_id() -> dict | None:
    """{"vendor", "family", "model", "name"} of this machine's CPU (Linux), else None."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break            # the first processor is enough
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        return None
    try:
        return {"vendor": fields["vendor_id"], "family": int(fields["cpu family"]),
                "model": int(fields["model"]), "name": fields.get("model name", "")}
    except (KeyError, ValueError):
        return None


def cpu_key(cid: dict) -> str:
    """'amd-25-17' for an AMD family 25 model 17 (Zen 4 Genoa): the directory suffix."""
    vendor = _VENDORS.get(cid["vendor"], cid["vendor"].lower())
    return f"{vendor}-{cid['family']}-{cid['model']}"


def cpu_match(db_cpu: dict | None, host: dict | None) -> int:
    """3 same vendor/family/model, 2 same family, 1 same vendor, 0 otherwise or unknown."""
    if not db_cpu or not host or db_cpu.get("vendor") != host.get("vendor"):
        return 0
    if db_cpu.get("family") != host.get("family"):
        return 1
    return 3 if db_cpu.get("model") == host.get("model") else 2


def measured_vendor(meta: dict) -> str | None:
    """The vendor id of the CPU a database was measured on: its `cpu_id`, else read from the
    CPU name it records (databases exported before `cpu_id` existed), else None."""
    cid = meta.get("cpu_id") or {}
    if cid.get("vendor"):
        return cid["vendor"]
    name = str(meta.get("cpu") or "")
    for word, vendor in (("Intel", "GenuineIntel"), ("AMD", "AuthenticAMD")):
        if word in name:
            return vendor
    return None


def directories(target_name: str) -> list[Path]:
    """`<target>/` and every `<target>@<cpu>/` under root(), generic first."""
    r = root()
    out = [r / target_name] if (r / target_name).is_dir() else []
    if r.is_dir():
        out += sorted(p for p in r.glob(target_name + CPU_SEP + "*") if p.is_dir())
    return out


def root() -> Path:
    env = os.environ.get("QCOMPILE_PRETUNED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "pretuned"


def lookup(spec, cpu: dict | None = None) -> tuple[Path | None, str]:
    """(database directory, "") for the shipped database of `spec` measured on the CPU
    closest to `cpu` (None: the generic `<target>/` first), else (None, reason)."""
    found, reasons = [], []
    for d in directories(spec.name) or [root() / spec.name]:
        path, reason = _check(d, spec)
        (found.append(path) if path is not None else reasons.append(reason))
    if not found:
        return None, reasons[0]
    return max(found, key=lambda d: (cpu_match(info(d).get("cpu_id"), cpu),
                                     d.name == spec.name)), ""


def _check(d: Path, spec) -> tuple[Path | None, str]:
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


def open_pretuned(spec, cpu: dict | None = None, path: Path | None = None):
    """(MetaSchedule database or None, description dict). path: that directory (checked
    against `spec`) instead of the lookup by CPU."""
    path, reason = lookup(spec, cpu) if path is None else _check(Path(path), spec)
    if path is None:
        return None, {"used": False, "reason": reason}
    vendor = measured_vendor(info(path))
    if cpu is not None and vendor and cpu.get("vendor") and vendor != cpu["vendor"]:
        return None, {"used": False, "path": str(path), "cpu": info(path).get("cpu"),
                      "cpu_match": MATCH[0],
                      "reason": f"the shipped database for {spec.name!r} was measured on a CPU "
                      f"of another vendor ({info(path).get('cpu')}): such records were slower "
                      "than the untuned templates (see qcompile/pretuned/README.md); tune on "
                      "this machine (qcompile tune) for records of its own"}
    try:
        opened = dbm.open_database(path, spec, create=False, writable=False, shipped=True)
    except dbm.TuningDatabaseError as err:
        return None, {"used": False, "reason": f"shipped database {path} unusable: {err}"}
    meta = info(path)
    desc = {"used": True, "path": str(path),
            **{k: v for k, v in meta.items() if k in ("models", "cpu", "cpu_id", "trials")}}
    if cpu is not None:
        desc["cpu_match"] = MATCH[cpu_match(meta.get("cpu_id"), cpu)]
    return opened.db, desc


def coverage(db, tasks) -> int:
    """How many of the extracted tasks have a valid record in `db`."""
    return sum(dbm.tuned_workloads(db, tasks)) if db is not None else 0


def combine(user_db, spec, enabled: bool = True, fused_mod=None, target=None,
            cpu: dict | None = None):
    """The database a build applies: the user's first, then the shipped one for the target
    (measured on the CPU closest to `cpu`). Returns (database or None, model.json entry)."""
    if not enabled:
        return user_db, {"used": False, "reason": "--no-pretuned"}
    shipped, desc = open_pretuned(spec, cpu)
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
