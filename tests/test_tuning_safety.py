"""Tuning database safety without measuring anything: torn last lines (a run killed while
appending) are cut off and kept, genuine corruption is refused and left untouched, readers
never write, one tuning run at a time (a killed holder frees the lock), the resumable search
never re-proposes a measured candidate, and shipped (pre-tuned) databases are found by
target identity."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from conftest import make_mlp
from qcompile.errors import TuningDatabaseError
from qcompile.tuning import database as dbm


@pytest.fixture(scope="module")
def mlp_setup(tmp_path_factory):
    """The MLP's first fused task and a context factory (no measuring)."""
    from qcompile import codegen, frontend, targets
    from qcompile.tuning import tuner

    work = tmp_path_factory.mktemp("mlp")
    onnx.save(make_mlp(), work / "mlp.onnx")
    spec = targets.resolve("host")
    target = spec.tvm_target(2)
    fused = codegen.fuse(frontend.import_onnx(str(work / "mlp.onnx"), {}).mod, target)
    tasks = tuner.extract_tasks(fused, target)
    return {"spec": spec, "target": target, "tasks": tasks, "onnx": work / "mlp.onnx",
            "work": work}


def _context(setup, strategy, task=0):
    from tvm.s_tir import meta_schedule as ms

    t = setup["tasks"][task]
    return ms.TuneContext(mod=t.dispatched[0], target=setup["target"],
                          space_generator="post-order-apply", search_strategy=strategy,
                          task_name=t.task_name, rand_state=7, num_threads=1).clone()


def _sample(setup, n, db, task=0):
    """n candidates of a task drawn by MetaSchedule's ReplayTrace (seeded: deterministic)."""
    from tvm.s_tir import meta_schedule as ms

    ctx = _context(setup, ms.search_strategy.ReplayTrace(), task)
    ctx.pre_tuning(max_trials=n, num_trials_per_iter=n, design_spaces=ctx.generate_design_space(),
                   database=db, cost_model=None)
    return ctx.generate_measure_candidates()


def _commit(setup, db, cands, task=0, secs=1e-5):
    from tvm.s_tir import meta_schedule as ms

    wl = db.commit_workload(setup["tasks"][task].dispatched[0])
    for i, c in enumerate(cands):
        db.commit_tuning_record(ms.database.TuningRecord(
            c.sch.trace, wl, [secs * (i + 1)], setup["target"], c.args_info))


@pytest.fixture(scope="module")
def base_db(mlp_setup, tmp_path_factory):
    """A real database directory: 2 workloads, 4 + 2 records (fake timings)."""
    path = tmp_path_factory.mktemp("db") / "db"
    opened = dbm.open_database(path, mlp_setup["spec"], writable=True)
    try:
        mem = _memory_db()
        _commit(mlp_setup, opened.db, _sample(mlp_setup, 4, mem, 0), 0)
        _commit(mlp_setup, opened.db, _sample(mlp_setup, 2, mem, 1), 1)
    finally:
        opened.close()
    return path


def _memory_db():
    from tvm.s_tir import meta_schedule as ms

    return ms.database.MemoryDatabase(module_equality="structural")


@pytest.fixture
def db(base_db, tmp_path):
    d = tmp_path / "db"
    shutil.copytree(base_db, d)
    return d


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_clean_database_round_trip(db, mlp_setup):
    opened = dbm.open_database(db, mlp_setup["spec"], writable=True)
    opened.close()
    assert opened.repairs == [] and len(opened.db.get_all_tuning_records()) == 6
    assert dbm.scan_database(db)[1].lines == 6


@pytest.mark.parametrize("which", [dbm.RECORDS, dbm.WORKLOADS])
def test_torn_last_line_is_cut_off_and_kept(db, mlp_setup, which):
    f = db / which
    good = f.read_bytes()
    last = good[:-1].rsplit(b"\n", 1)[-1]
    if which == dbm.WORKLOADS:  # a torn workload line (no records can follow it)
        torn = last[:400]
    else:  # SIGKILL in the middle of MetaSchedule's append of a record
        torn = last[: len(last) // 2]
    f.write_bytes(good + torn)
    # a build (reader) loads the complete lines and does not touch the file
    ro = dbm.open_database(db, mlp_setup["spec"], writable=False)
    assert ro.snapshot and len(ro.db.get_all_tuning_records()) == 6
    assert f.read_bytes() == good + torn
    # a tuning run (writer) repairs: fragment kept in recovered/, file back to its prefix
    opened = dbm.open_database(db, mlp_setup["spec"], writable=True)
    try:
        assert len(opened.repairs) == 1 and "torn" in opened.repairs[0]
        assert f.read_bytes() == good
        kept = list((db / dbm.RECOVERED).iterdir())
        assert len(kept) == 1 and kept[0].read_bytes() == torn
        assert len(opened.db.get_all_tuning_records()) == 6
        # appending after the repair gives valid lines (not glued to the fragment)
        _commit(mlp_setup, opened.db, _sample(mlp_setup, 5, _memory_db(), 0)[4:], 0)
    finally:
        opened.close()
    assert dbm.scan_database(db)[1].lines == 7 and dbm.scan_database(db)[1].clean


def test_missing_final_newline_is_added(db, mlp_setup):
    f = db / dbm.RECORDS
    good = f.read_bytes()
    f.write_bytes(good[:-1])
    opened = dbm.open_database(db, mlp_setup["spec"], writable=True)
    opened.close()
    assert f.read_bytes() == good and "newline" in opened.repairs[0]


@pytest.mark.parametrize("damage", ["middle_line", "garbage_tail", "unknown_workload",
                                    "empty_line"])
def test_corruption_is_refused_and_left_untouched(db, mlp_setup, damage):
    f = db / dbm.RECORDS
    lines = f.read_bytes().splitlines(keepends=True)
    if damage == "middle_line":
        lines[2] = lines[2][:30] + b"\n"
        where = "line 3"
    elif damage == "garbage_tail":
        lines.append(b"\x00\x01garbage that is not a record")
        where = "line 7"
    elif damage == "unknown_workload":
        lines[1] = b"[99" + lines[1][lines[1].index(b","):]
        where = "line 2"
    else:
        lines.insert(3, b"\n")
        where = "line 4"
    f.write_bytes(b"".join(lines))
    before = _files(db)
    for writable in (True, False):
        with pytest.raises(TuningDatabaseError, match=f"corrupt at {where}.*left untouched"):
            dbm.open_database(db, mlp_setup["spec"], writable=writable)
        assert _files(db) == before
    assert not (db / dbm.RECOVERED).exists()


def test_one_tuning_run_at_a_time(db, mlp_setup):
    first = dbm.open_database(db, mlp_setup["spec"], writable=True)
    try:
        with pytest.raises(TuningDatabaseError, match=f"in use by another tuning run.*pid "
                                                      f"{os.getpid()}"):
            dbm.open_database(db, mlp_setup["spec"], writable=True)
        ro = dbm.open_database(db, mlp_setup["spec"], writable=False)  # builds still work
        assert ro.snapshot and len(ro.db.get_all_tuning_records()) == 6
    finally:
        first.close()
    dbm.open_database(db, mlp_setup["spec"], writable=True).close()


def test_lock_of_a_killed_run_is_released(db, mlp_setup):
    code = ("import sys, time; from qcompile import targets; from qcompile.tuning import "
            "database as d; o = d.open_database(sys.argv[1], targets.resolve('host'), "
            "writable=True); print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(TuningDatabaseError, match="in use"):
            dbm.open_database(db, mlp_setup["spec"], writable=True)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    dbm.open_database(db, mlp_setup["spec"], writable=True).close()


def test_resumable_search_skips_measured_candidates(mlp_setup):
    """MetaSchedule alone re-proposes candidates the database holds (its measured set starts
    empty each run); the wrapper drops them before they are built or measured."""
    from qcompile.tuning.search import make_search, module_hash

    first = _sample(mlp_setup, 4, _memory_db())
    hashes = [module_hash(c.sch.mod) for c in first]
    db = _memory_db()
    _commit(mlp_setup, db, first[:2])
    # plain MetaSchedule with the same seed proposes the two measured candidates again
    again = [module_hash(c.sch.mod) for c in _sample(mlp_setup, 4, db)]
    assert again[:2] == hashes[:2]
    # through the wrapper: they are skipped, the two others go out
    stats = {}
    ctx = _context(mlp_setup, make_search(4, stats=stats, inner="replay-trace"))
    ctx.pre_tuning(max_trials=4, num_trials_per_iter=4,
                   design_spaces=ctx.generate_design_space(), database=db, cost_model=None)
    out = [module_hash(c.sch.mod) for c in ctx.generate_measure_candidates()]
    assert out == hashes[2:] and stats["skipped_duplicates"] == 2
    assert stats["db_records"] == 2


def test_deadline_and_exhaustion(mlp_setup):
    from qcompile.tuning.search import make_search

    stats = {}
    ctx = _context(mlp_setup, make_search(4, deadline=time.time() - 1, stats=stats,
                                          inner="replay-trace"))
    ctx.pre_tuning(max_trials=4, num_trials_per_iter=4,
                   design_spaces=ctx.generate_design_space(), database=_memory_db(),
                   cost_model=None)
    assert ctx.generate_measure_candidates() is None and stats["deadline_hit"]


def test_pretuned_lookup_by_target_identity(db, mlp_setup, tmp_path, monkeypatch,
                                            other_x86_target):
    from qcompile import targets
    from qcompile.tuning import pretuned

    root = tmp_path / "pretuned"
    spec = mlp_setup["spec"]
    shutil.copytree(db, root / spec.name)
    monkeypatch.setenv("QCOMPILE_PRETUNED_DIR", str(root))
    path, reason = pretuned.lookup(spec)
    assert path == root / spec.name and reason == ""
    shipped, desc = pretuned.open_pretuned(spec)
    assert desc["used"] and len(shipped.get_all_tuning_records()) == 6
    assert pretuned.lookup(other_x86_target)[0] is None
    header = json.loads((root / spec.name / dbm.HEADER).read_text())
    header["tvm"] = "0.19.0"
    (root / spec.name / dbm.HEADER).write_text(json.dumps(header))
    path, reason = pretuned.lookup(spec)
    assert path is None and "tvm" in reason


def test_pretuned_prefers_the_database_measured_on_the_closest_cpu(db, mlp_setup, tmp_path,
                                                                   monkeypatch):
    """<target>@<cpu>/ beats <target>/ for a host of that CPU; a cross build and an unknown
    CPU take <target>/; the build records which one and how close."""
    from qcompile.build import BuildConfig, build
    from qcompile.tuning import pretuned

    spec = mlp_setup["spec"]
    root = tmp_path / "pretuned"
    intel = {"vendor": "GenuineIntel", "family": 6, "model": 106, "name": "Xeon"}
    zen4 = {"vendor": "AuthenticAMD", "family": 25, "model": 17, "name": "EPYC"}
    zen3 = dict(zen4, model=1)
    for cid, name in ((intel, spec.name), (zen4, spec.name + "@" + pretuned.cpu_key(zen4))):
        shutil.copytree(db, root / name)
        (root / name / pretuned.INFO).write_text(json.dumps({"cpu": cid["name"], "cpu_id": cid}))
    monkeypatch.setenv("QCOMPILE_PRETUNED_DIR", str(root))
    assert pretuned.cpu_key(zen4) == "amd-25-17"
    assert pretuned.lookup(spec, zen4)[0].name == spec.name + "@amd-25-17"
    assert pretuned.lookup(spec, zen3)[0].name == spec.name + "@amd-25-17"   # same family
    assert pretuned.lookup(spec, intel)[0].name == spec.name
    assert pretuned.lookup(spec, None)[0].name == spec.name
    assert pretuned.open_pretuned(spec, zen3)[1]["cpu_match"] == "same CPU family"
    monkeypatch.setattr(pretuned, "cpu_id", lambda: zen4)
    b = build(str(mlp_setup["onnx"]), BuildConfig(), tmp_path / "b", quiet=True)
    p = b.meta["pretuned"]
    assert p["path"].endswith("@amd-25-17") and p["cpu_match"] == "same CPU model"
    # a directory whose header does not match is skipped, not chosen for its CPU
    header = json.loads((root / (spec.name + "@amd-25-17") / dbm.HEADER).read_text())
    header["tvm"] = "0.19.0"
    (root / (spec.name + "@amd-25-17") / dbm.HEADER).write_text(json.dumps(header))
    assert pretuned.lookup(spec, zen4)[0].name == spec.name


def test_pretuned_from_another_cpu_vendor_is_not_applied(db, mlp_setup, tmp_path,
                                                         monkeypatch):
    """Records measured on an Intel CPU are not applied on an AMD host (they were slower
    than the untuned templates there), nor the reverse; the build says why. A database
    whose CPU is unknown, or a cross build (no host CPU), still uses them."""
    from qcompile.build import BuildConfig, build
    from qcompile.tuning import pretuned

    spec = mlp_setup["spec"]
    root = tmp_path / "pretuned"
    shutil.copytree(db, root / spec.name)
    monkeypatch.setenv("QCOMPILE_PRETUNED_DIR", str(root))
    amd = {"vendor": "AuthenticAMD", "family": 25, "model": 1, "name": "AMD EPYC"}
    intel = {"vendor": "GenuineIntel", "family": 6, "model": 143, "name": "Intel Xeon"}
    # no qcompile-pretuned.json: the measuring CPU is unknown, the records are used
    assert pretuned.open_pretuned(spec, amd)[1]["used"]
    # an older export records only the CPU name
    (root / spec.name / pretuned.INFO).write_text(json.dumps({"cpu": "Intel(R) Xeon(R) CPU"}))
    shipped, desc = pretuned.open_pretuned(spec, amd)
    assert shipped is None and not desc["used"] and "another vendor" in desc["reason"]
    assert pretuned.open_pretuned(spec, intel)[1]["used"]
    assert pretuned.open_pretuned(spec, None)[1]["used"]      # cross build
    (root / spec.name / pretuned.INFO).write_text(json.dumps({"cpu": "x", "cpu_id": amd}))
    assert not pretuned.open_pretuned(spec, intel)[1]["used"]
    monkeypatch.setattr(pretuned, "cpu_id", lambda: intel)
    b = build(str(mlp_setup["onnx"]), BuildConfig(), tmp_path / "b", quiet=True)
    assert not b.meta["pretuned"]["used"] and b.meta["pretuned"]["cpu_match"] == "another CPU"


def test_build_uses_pretuned_unless_disabled(db, mlp_setup, tmp_path, monkeypatch):
    from qcompile.build import BuildConfig, build

    root = tmp_path / "pretuned"
    shutil.copytree(db, root / mlp_setup["spec"].name)
    monkeypatch.setenv("QCOMPILE_PRETUNED_DIR", str(root))
    on = build(str(mlp_setup["onnx"]), BuildConfig(), tmp_path / "on", quiet=True)
    p = on.meta["pretuned"]
    assert p["used"] and p["tasks"] == 2 and p["tasks_from_pretuned"] == 2
    off = build(str(mlp_setup["onnx"]), BuildConfig(pretuned=False), tmp_path / "off",
                quiet=True)
    assert off.meta["pretuned"] == {"used": False, "reason": "--no-pretuned"}
    # the shipped records were applied: the libraries differ
    assert (tmp_path / "on" / "model.so").read_bytes() != (tmp_path / "off" / "model.so").read_bytes()


def test_records_of_a_differently_named_twin(mlp_setup, tmp_path):
    """MetaSchedule matches workloads by structural equality, which ignores block names, but
    a trace names blocks: a record traced on a renamed twin of a stored workload does not
    load. qcompile tunes the stored copy (tuner.py), and names the bad line if it happens."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from qcompile.tuning.search import make_search

    mod = mlp_setup["tasks"][0].dispatched[0]
    twin = tvm.script.from_source(mod.script().replace('"matmul"', '"matmul_renamed"'))
    twin = tvm.IRModule({"main": twin["main"] if isinstance(twin, tvm.IRModule) else twin})
    path = tmp_path / "db"
    opened = dbm.open_database(path, mlp_setup["spec"], writable=True)
    try:
        wl = opened.db.commit_workload(mod)
        assert dbm.task_workload(opened.db, twin).mod.same_as(wl.mod)  # the twin matches
        # what tuner.py does: sample on the stored copy -> loadable
        stored = dbm.task_workload(opened.db, twin).mod
        ctx = ms.TuneContext(mod=stored, target=mlp_setup["target"],
                             space_generator="post-order-apply",
                             search_strategy=make_search(2, inner="replay-trace"),
                             rand_state=1, num_threads=1).clone()
        ctx.pre_tuning(max_trials=2, num_trials_per_iter=2,
                       design_spaces=ctx.generate_design_space(), database=opened.db,
                       cost_model=None)
        for c in ctx.generate_measure_candidates():
            opened.db.commit_tuning_record(ms.database.TuningRecord(
                c.sch.trace, wl, [1e-5], mlp_setup["target"], c.args_info))
    finally:
        opened.close()
    assert len(dbm.open_database(path, mlp_setup["spec"]).db.get_all_tuning_records()) == 2
    # a record traced on the twin itself: TVM refuses the whole database; qcompile says where
    bad = _context({**mlp_setup, "tasks": [type("T", (), {"dispatched": [twin],
                                                          "task_name": "twin"})()]},
                   ms.search_strategy.ReplayTrace())
    bad.pre_tuning(max_trials=1, num_trials_per_iter=1, design_spaces=bad.generate_design_space(),
                   database=_memory_db(), cost_model=None)
    c = bad.generate_measure_candidates()[0]
    idx_line = json.dumps([0, ms.database.TuningRecord(
        c.sch.trace, wl, [1e-5], mlp_setup["target"], c.args_info).as_json()])
    with open(path / dbm.RECORDS, "a") as f:
        f.write(idx_line + "\n")
    before = _files(path)
    with pytest.raises(TuningDatabaseError, match="line 3 .*does not replay on its workload"):
        dbm.open_database(path, mlp_setup["spec"], writable=True)
    assert _files(path) == before
