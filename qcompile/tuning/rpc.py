"""Tuning on target machines through TVM's own RPC (tracker + servers + MetaSchedule's
RPCRunner); no protocol of qcompile's own.

    workstation                        tracker (any machine)          target boards
    qcompile tune --rpc H:P --key K --> tvm.rpc.tracker.Tracker  <-- qcompile rpc server
      LocalBuilder: builds candidates       queue per key               --tracker H:P --key K
      RPCRunner: one worker per free  ---- sessions (upload .so, time_evaluator) ---->
      server, uploads + measures

What qcompile adds on top of `tvm.rpc`:
- `qcompile rpc server` registers `qcompile.rpc.server_info` (name, CPU flags, versions) in
  the server process, so the tuner can refuse a board whose CPU lacks the target's
  instructions (instead of recording SIGILL failures) and count what each board measured
  (`qcompile-measurements.jsonl` in the database directory). A plain `python -m
  tvm.exec.rpc_server` works too, without those two extras.
- candidates travel as linked `.so` files (builder.py), so a board needs only the TVM
  runtime, not a C toolchain.

Security: an RPC server runs whatever code it is sent, with the rights of its user. Servers
and trackers bind to 127.0.0.1 unless `--host` says otherwise; expose them only on a trusted
network.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import threading
import time
from pathlib import Path

from ..errors import QCompileError

SERVER_INFO_FUNC = "qcompile.rpc.server_info"
SECURITY_WARNING = ("WARNING: a TVM RPC server runs any code it is sent, with the rights of "
                    "the user running it. Bind it to 127.0.0.1 (the default) or expose it only "
                    "on a trusted network (--host).")


class RPCError(QCompileError):
    """The tracker cannot be reached, no server has the key, or a server is unsuitable."""


def parse_addr(text: str, flag: str = "--rpc", default_port: int | None = None
               ) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = str(text), ("" if default_port is None else str(default_port))
    try:
        port_n = int(port)
    except ValueError:
        raise RPCError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190") from None
    if not host or not 0 < port_n < 65536:
        raise RPCError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, port_n


@dataclasses.dataclass(frozen=True)
class RPCSettings:
    """Where candidates are measured: a tracker and the device key of the servers."""
    host: str
    port: int
    key: str
    session_timeout: float = 60.0   # server-side limit for one upload + measurement session
    connect_timeout: float = 10.0

    @classmethod
    def from_flags(cls, addr: str, key: str | None, **kw) -> "RPCSettings":
        if not key:
            raise RPCError("--rpc needs --key KEY: the device key the servers registered with "
                           "(`qcompile rpc server --key KEY`)")
        host, port = parse_addr(addr)
        return cls(host, port, key, **kw)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def rpc_config(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port,
                                   tracker_key=self.key, session_priority=1,
                                   session_timeout_sec=int(self.session_timeout))

    def as_dict(self) -> dict:
        return {"tracker_host": self.host, "tracker_port": self.port, "tracker_key": self.key,
                "session_timeout_sec": int(self.session_timeout)}


# ---- server side ----------------------------------------------------------------------------

def local_info(name: str) -> dict:
    import platform

    from .. import __version__
    from ..targets import cpu_flags
    from ..util import tvm_version

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"name": name, "hostname": socket.gethostname(), "pid": os.getpid(),
            "cpu_model": model,
            "machine": platform.machine(), "cpu_flags": sorted(cpu_flags()),
            "tvm": tvm_version(), "qcompile": __version__}


def _bound_port() -> int | None:
    try:
        from tvm.rpc.server import PopenRPCServerState

        return PopenRPCServerState.current.port
    except AttributeError:
        return None


def server_init(name: str | None = None) -> None:
    """Runs in the RPC server process before it serves (server_init_callback): registers
    `qcompile.rpc.server_info` (default name HOSTNAME:PORT, the port it bound), and
    qcompile's OpenCL measure function when available."""
    import tvm

    def server_info() -> str:
        return json.dumps(local_info(name or f"{socket.gethostname()}:{_bound_port()}"))

    tvm.register_global_func(SERVER_INFO_FUNC, server_info, override=True)
    # OpenCL measuring is optional on a CPU board
    try:
        from ..gpu import remote as gpu_remote
        from ..gpu.opencl import OpenCLUnavailable
    except ImportError:
        return
    try:
        gpu_remote.server_init()
    except (ImportError, OpenCLUnavailable):
        pass


def start_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int = 9199,
                  silent: bool = False):
    """A `tvm.rpc.tracker.Tracker` (its own process); `.port` is the port it bound."""
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as err:  # tornado missing
        raise RPCError(f"the TVM RPC tracker cannot start: {err}") from err
    return Tracker(host=host, port=port, port_end=port_end, silent=silent)


def start_server(tracker: tuple[str, int], key: str, host: str = "127.0.0.1",
                 port: int = 9090, port_end: int = 9199, name: str | None = None,
                 silent: bool = False, custom_addr: str | None = None):
    """A `tvm.rpc.server.Server` registered with the tracker under `key` (its own process)."""
    from tvm.rpc.server import Server

    server = Server(host=host, port=port, port_end=port_end, tracker_addr=tuple(tracker),
                    key=key, silent=silent, custom_addr=custom_addr,
                    server_init_callback=functools.partial(server_init, name))
    server.qcompile_name = name or f"{socket.gethostname()}:{server.port}"
    return server


# ---- client side ----------------------------------------------------------------------------

def _with_timeout(fn, timeout: float, what: str):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as err:  # noqa: BLE001 - any failure of fn is re-raised as RPCError
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RPCError(f"{what}: no answer within {timeout:.0f}s")
    if "error" in box:
        raise RPCError(f"{what}: {box['error']}") from box["error"]
    return box["value"]


def tracker_summary(host: str, port: int, timeout: float = 10.0) -> dict:
    """The tracker's queue: {"server_info": [...], "queue_info": {key: {free, pending}}}."""
    from tvm import rpc

    def query():
        tracker = rpc.connect_tracker(host, port)
        try:
            return tracker.summary()
        finally:
            tracker.close()

    return _with_timeout(query, timeout, f"RPC tracker {host}:{port}")


def servers_for_key(summary: dict, key: str) -> list[dict]:
    out = []
    for item in summary.get("server_info", []):
        k = item.get("key", "")
        if k.split(":", 1)[-1] == key:
            out.append(item)
    return out


def format_status(summary: dict, host: str, port: int) -> str:
    lines = [f"RPC tracker {host}:{port}", "", "servers:"]
    servers = sorted(summary.get("server_info", []), key=lambda s: s.get("key", ""))
    if not servers:
        lines.append("  (none registered)")
    for s in servers:
        addr = ":".join(str(a) for a in s.get("addr", []))
        lines.append(f"  {addr:24s} {s.get('key', '')}")
    lines += ["", f"{'key':20s} {'free':>5s} {'pending':>8s}"]
    queue = summary.get("queue_info", {})
    if not queue:
        lines.append("  (no queues)")
    for key, q in sorted(queue.items()):
        lines.append(f"{key:20s} {q.get('free', 0):5d} {q.get('pending', 0):8d}")
    return "\n".join(lines)


# What asking a server for `qcompile.rpc.server_info` raises when it is not a qcompile
# server: AttributeError (no such function: a plain TVM server), RuntimeError (tvm's
# RPCError: the function failed remotely), ValueError / TypeError (its answer is not JSON
# text), KeyError / AttributeError / TypeError (the JSON is not the expected object).
_NOT_QCOMPILE_SERVER = (AttributeError, RuntimeError, ValueError, TypeError, KeyError)


def probe_server(settings: RPCSettings) -> dict | None:
    """Ask one free server of the key who it is (None: a plain TVM server without qcompile)."""
    def ask():
        sess = settings.rpc_config().connect_server()
        try:
            return json.loads(sess.get_function(SERVER_INFO_FUNC)())
        except _NOT_QCOMPILE_SERVER:
            return None

    return _with_timeout(ask, settings.connect_timeout + settings.session_timeout,
                         f"RPC server with key {settings.key!r} via {settings.address}")


def check_fleet(settings: RPCSettings, required_flags, log=None) -> int:
    """Number of servers registered under the key; errors that say what to start or fix."""
    summary = tracker_summary(settings.host, settings.port, settings.connect_timeout)
    n = len(servers_for_key(summary, settings.key))
    if n == 0:
        keys = sorted({s.get("key", "").split(":", 1)[-1] for s in summary.get("server_info", [])})
        raise RPCError(
            f"no RPC server is registered with key {settings.key!r} at tracker "
            f"{settings.address} (keys present: {keys or 'none'}); start one on the target "
            f"machine: qcompile rpc server --tracker {settings.address} --key {settings.key}")
    info = probe_server(settings)
    if info is None:
        if log:
            log(f"qcompile: RPC servers for {settings.key!r} are plain TVM servers: their CPU "
                "cannot be checked against the target; candidates fail if it lacks the "
                "target's instructions")
    else:
        missing = [f for f in required_flags if f not in set(info.get("cpu_flags", []))]
        if missing:
            raise RPCError(
                f"RPC server {info.get('name')} (key {settings.key!r}) lacks the CPU flags "
                f"{missing} this target needs; register servers for this target under "
                "another key")
    return n


def run_evaluator(log_path: str | None, key: str, required_flags: tuple, session, rt_mod,
                  device, evaluator_config, repeated_args) -> list[float]:
    """RPCRunner's f_run_evaluator: MetaSchedule's own timing, plus a check that the server's
    CPU has the target's flags and a line in the measurement log naming the server."""
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    name, flags = "tvm-rpc-server", None
    try:
        info = json.loads(session.get_function(SERVER_INFO_FUNC)())
        name, flags = info["name"], set(info.get("cpu_flags", []))
    except _NOT_QCOMPILE_SERVER:  # a plain TVM server
        pass
    if flags is not None:
        missing = [f for f in required_flags if f not in flags]
        if missing:
            raise RuntimeError(f"RPC server {name} lacks CPU flags {missing}")
    costs = run_evaluator_common(rt_mod, device, evaluator_config, repeated_args)
    if log_path:
        line = json.dumps({"time": round(time.time(), 3), "server": name, "key": key,
                           "mean_s": sum(costs) / max(len(costs), 1)}) + "\n"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return costs


def make_runner(settings: RPCSettings, max_workers: int, log_path: str | os.PathLike | None,
                required_flags=(), evaluator_config=None):
    """MetaSchedule RPCRunner with one worker per server (several measure in parallel)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.RPCRunner(
        rpc_config=settings.rpc_config(), evaluator_config=evaluator_config,
        f_run_evaluator=functools.partial(run_evaluator, str(log_path) if log_path else None,
                                          settings.key, tuple(required_flags)),
        max_workers=max(1, int(max_workers)))


def read_measurements(log_path: Path, offset: int = 0) -> tuple[dict, int]:
    """Count log lines per server from byte `offset`; returns (counts, new offset)."""
    counts: dict[str, int] = {}
    p = Path(log_path)
    if not p.is_file():
        return counts, offset
    with open(p, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for raw in data[:end].splitlines():
        try:
            name = json.loads(raw)["server"]
        except (ValueError, KeyError, TypeError):
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts, offset + end
