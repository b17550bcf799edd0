"""Tuning through TVM RPC on loopback: `qcompile rpc tracker` + two `qcompile rpc server`s,
a small int8 model (u8 x s8 -> s32 convolutions + requantize, through the real low-precision
pipeline) tuned through them with `qcompile tune --rpc`; both servers measure candidates
(the tuner's per-server counts and the servers' own logs agree). The same model tuned
locally reaches a comparable latency. Every process started here is stopped here."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompile_tuning_models import make_int8_cnn

pytestmark = pytest.mark.slow

SEARCH = {"population_size": 32, "init_min_unmeasured": 8, "genetic_num_iters": 1,
          "num_trials_per_iter": 4}
ENV = {**os.environ, "QCOMPILE_TUNING_SEARCH": json.dumps(SEARCH), "TVM_NUM_THREADS": "2"}
TRIALS = 20
LOOPBACK = "127.0.0.1"


class Proc:
    """A `qcompile rpc ...` process in its own process group, stopped with its children."""

    def __init__(self, args, log: Path):
        self.log = log
        self.err = open(log, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "qcompile", "rpc", *args], env=ENV,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  start_new_session=True)

    def first_line(self, timeout=120) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no output from {self.p.args} in {timeout}s:\n"
                               + self.log.read_text())
        return self.p.stdout.readline().strip()

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # anything left in the group
        except ProcessLookupError:
            pass
        self.p.wait(timeout=15)
        self.err.close()


@pytest.fixture
def fleet(tmp_path):
    from qcompile.tuning import rpc as rpcm

    procs = []
    key = f"qtest-{os.getpid()}"
    base = random.Random(os.getpid()).randrange(20000, 50000)
    try:
        tracker = Proc(["tracker", "--host", LOOPBACK, "--port", str(base), "--port-end",
                        str(base + 200)], tmp_path / "tracker.log")
        procs.append(tracker)
        line = tracker.first_line()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        servers = []
        for name in ("board-a", "board-b"):
            s = Proc(["server", "--tracker", f"{LOOPBACK}:{port}", "--key", key, "--host",
                      LOOPBACK, "--port", str(base + 300), "--port-end", str(base + 600),
                      "--name", name], tmp_path / f"{name}.log")
            procs.append(s)
            assert name in s.first_line()
            servers.append(s)
        deadline = time.time() + 60
        while len(rpcm.servers_for_key(rpcm.tracker_summary(LOOPBACK, port), key)) < 2:
            assert time.time() < deadline, "servers did not register"
            time.sleep(0.5)
        yield {"tracker": f"{LOOPBACK}:{port}", "key": key, "servers": servers}
    finally:
        for p in reversed(procs):
            p.stop()


def _qcompile(*args, timeout=900):
    out = subprocess.run([sys.executable, "-m", "qcompile", *args], env=ENV,
                         capture_output=True, text=True, timeout=timeout)
    return out


def _ok(out):
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _latency(build_dirs, rounds=5, niter=100):
    """Median latency per build, runs interleaved so machine load hits both alike."""
    import qcompile

    models = [qcompile.load(d) for d in build_dirs]
    feed = models[0].random_inputs()
    times = [[] for _ in models]
    for _ in range(rounds):
        for m, t in zip(models, times):
            t.extend(m.time_runs(feed, niter, 5))
    return [float(np.median(t)) for t in times]


def test_tune_through_two_rpc_servers_then_locally(fleet, tmp_path):
    model = tmp_path / "int8.onnx"
    onnx.save(make_int8_cnn(), model)
    status = _ok(_qcompile("rpc", "status", "--tracker", fleet["tracker"], "--key",
                           fleet["key"])).stdout
    assert status.count(f"server:{fleet['key']}") == 2
    assert re.search(rf"{fleet['key']}\s+2\s+0", status)

    # a target whose instructions the servers lack is refused before tuning
    bad = _qcompile("tune", str(model), "--target", "avx512-vnni", "--rpc", fleet["tracker"],
                    "--key", fleet["key"], "--trials", "4", "--tuning-db",
                    str(tmp_path / "db-vnni"))
    if "avx512_vnni" not in open("/proc/cpuinfo").read():
        assert bad.returncode == 2 and "lacks the CPU flags" in bad.stderr

    # tuned through the two servers
    rpc = json.loads(_ok(_qcompile(
        "tune", str(model), "--rpc", fleet["tracker"], "--key", fleet["key"], "--trials",
        str(TRIALS), "--tuning-db", str(tmp_path / "db-rpc"), "--seed", "0", "--json")).stdout)
    assert rpc["trials"] > 0 and rpc["rpc"].startswith(fleet["tracker"])
    assert set(rpc["servers"]) == {"board-a", "board-b"}, rpc["servers"]
    assert all(n > 0 for n in rpc["servers"].values())
    assert sum(rpc["servers"].values()) <= rpc["trials"]  # build failures are not measured
    for s in fleet["servers"]:  # the servers' own logs: each loaded candidates
        assert s.log.read_text().count("load_module") > 0

    # the same model tuned locally
    local = json.loads(_ok(_qcompile(
        "tune", str(model), "--trials", str(TRIALS), "--tuning-db", str(tmp_path / "db-local"),
        "--seed", "0", "--json")).stdout)
    assert local["trials"] > 0 and local["servers"] == {}

    for name in ("rpc", "local"):
        _ok(_qcompile("build", str(model), "--tuning-db", str(tmp_path / f"db-{name}"),
                      "--no-pretuned", "-o", str(tmp_path / f"b-{name}"), "--quiet"))
    lat_rpc, lat_local = _latency([tmp_path / "b-rpc", tmp_path / "b-local"])
    print(f"int8 CNN latency: tuned via RPC {lat_rpc * 1e3:.3f} ms, locally "
          f"{lat_local * 1e3:.3f} ms")
    assert 0.5 < lat_rpc / lat_local < 2.0
