"""A tuning run killed with SIGKILL mid-way, then resumed with the same command: no record
lost, no finished candidate measured twice, and the final build is exactly the build from
the best record of every task. Also: a finished database is not tuned again, and
`--time-budget` stops a run."""
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
from qcompile.tuning import database as dbm

# small search for a 2-core CI machine; 2 candidates a batch so a kill lands mid-task
SEARCH = {"population_size": 32, "init_min_unmeasured": 8, "genetic_num_iters": 1,
          "num_trials_per_iter": 2}
ENV = {"QCOMPILE_TUNING_SEARCH": json.dumps(SEARCH), "TVM_NUM_THREADS": "2"}


def _tune_cmd(model, db, trials, *extra):
    return [sys.executable, "-m", "qcompile", "tune", str(model), "--tuning-db", str(db),
            "--trials", str(trials), "--seed", "0", *extra]


def _run(cmd, timeout=900):
    out = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _record_lines(db: Path) -> list[bytes]:
    data = (db / dbm.RECORDS).read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines()


def _module_hashes(db: Path) -> list[int]:
    """Replay every record's trace: the module that was measured."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from qcompile.tuning.search import module_hash

    d = ms.database.JSONDatabase(str(db / dbm.WORKLOADS), str(db / dbm.RECORDS),
                                 allow_missing=False, module_equality="structural")
    out = []
    for rec in d.get_all_tuning_records():
        sch = s_tir.Schedule(rec.workload.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        out.append(module_hash(sch.mod))
    return out


def _best_only_copy(db: Path, dst: Path) -> int:
    """A database holding only the fastest valid record of each workload, chosen by reading
    the JSON lines here (independently of TVM's loader)."""
    dst.mkdir()
    shutil.copy(db / dbm.HEADER, dst / dbm.HEADER)
    shutil.copy(db / dbm.WORKLOADS, dst / dbm.WORKLOADS)
    best: dict[int, tuple[float, bytes]] = {}
    for line in _record_lines(db):
        idx, rec = json.loads(line)
        secs = [float(s) for s in rec[1]] if rec[1] else [1e10]
        mean = sum(secs) / len(secs)
        if mean < 1e9 and (idx not in best or mean < best[idx][0]):
            best[idx] = (mean, line)
    (dst / dbm.RECORDS).write_bytes(b"".join(v[1] + b"\n" for _, v in sorted(best.items())))
    return len(best)


def test_sigkill_then_resume(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), model)
    db = tmp_path / "db"
    cmd = _tune_cmd(model, db, 16)  # 2 tasks x 8 trials
    p = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    rec = db / dbm.RECORDS
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if rec.exists() and rec.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)  # the tuning process itself, mid-run
        p.wait(timeout=60)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its builder/runner workers
        except ProcessLookupError:
            pass
    killed = rec.read_bytes()
    kept = killed[: killed.rfind(b"\n") + 1]
    n_killed = kept.count(b"\n")
    assert 5 <= n_killed < 16

    out = _run(cmd + ["--json"])
    summary = json.loads(out.stdout)
    final = rec.read_bytes()
    # no record lost: the killed run's records are the start of the file
    assert final.startswith(kept)
    lines = _record_lines(db)
    assert summary["records_before"] == n_killed
    assert len(lines) == n_killed + summary["trials"]
    per_task = {r["task"]: r for r in summary["per_task"]}
    assert all(r["total_trials"] <= 8 for r in per_task.values())
    assert all(r["total_trials"] == 8 or "exhausted" in r["status"] for r in per_task.values())
    # no candidate measured twice (the resumed search skipped what was measured)
    hashes = _module_hashes(db)
    assert len(hashes) == len(lines) and len(set(hashes)) == len(hashes)

    # finished: a rerun measures nothing
    again = json.loads(_run(cmd + ["--json"]).stdout)
    assert again["trials"] == 0 and again["stopped_by"] == "nothing left to tune"
    assert rec.read_bytes() == final

    # the final build is the build from exactly the best record of each task
    _run([sys.executable, "-m", "qcompile", "build", str(model), "--tuning-db", str(db),
          "--no-pretuned", "-o", str(tmp_path / "b1"), "--quiet"])
    best = tmp_path / "best"
    assert _best_only_copy(db, best) == 2
    _run([sys.executable, "-m", "qcompile", "build", str(model), "--tuning-db", str(best),
          "--no-pretuned", "-o", str(tmp_path / "b2"), "--quiet"])
    lib1 = (tmp_path / "b1" / "model.so").read_bytes()
    assert lib1 == (tmp_path / "b2" / "model.so").read_bytes()


def test_time_budget_stops_the_run(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), model)
    t0 = time.time()
    out = _run(_tune_cmd(model, tmp_path / "db", 4000, "--time-budget", "15s", "--json"))
    summary = json.loads(out.stdout)
    assert summary["stopped_by"] == "time budget reached" and summary["time_budget"] == 15
    assert summary["trials"] < 4000
    assert summary["seconds"] < 15 + 120  # the batches in flight finish after the deadline
    assert time.time() - t0 < 600
