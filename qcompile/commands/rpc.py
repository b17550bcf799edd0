"""TVM RPC for tuning on target machines (TVM's own tracker and servers, `tvm.rpc`).

  qcompile rpc tracker [--host H] [--port P]          the queue the boards register with
  qcompile rpc server --tracker H:P --key KEY          on each board: measures candidates
  qcompile rpc status --tracker H:P                    servers and queue per key

then `qcompile tune MODEL --target T --rpc H:P --key KEY --trials N` on the workstation.
Everything binds to 127.0.0.1 unless --host is given. An RPC server runs any code it is
sent: expose it only on a trusted network.
"""
from __future__ import annotations

import json
import signal
import sys
import time


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="rpc_command", metavar="{tracker,server,status}")
    sub.required = True
    t = sub.add_parser("tracker", help="run a TVM RPC tracker (until Ctrl-C / SIGTERM)")
    t.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: "
                   "this machine only; 0.0.0.0 for the network)")
    t.add_argument("--port", type=int, default=9190, help="first port to try (default 9190)")
    t.add_argument("--port-end", type=int, default=None, help="last port to try + 1 "
                   "(default port + 10)")
    t.add_argument("--quiet", action="store_true", help="no connection log")

    s = sub.add_parser("server", help="run a TVM RPC server registered with a tracker "
                       "(until Ctrl-C / SIGTERM)")
    s.add_argument("--tracker", required=True, metavar="HOST:PORT", help="tracker address")
    s.add_argument("--key", required=True, help="device key clients ask for (e.g. the "
                   "target name: avx512-vnni)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "a board serving a tracker on another machine needs its network address "
                   "or 0.0.0.0)")
    s.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    s.add_argument("--port-end", type=int, default=None, help="last port to try + 1 "
                   "(default port + 100)")
    s.add_argument("--name", default=None, help="name reported in tuning logs (default "
                   "HOSTNAME:PORT)")
    s.add_argument("--custom-addr", default=None, help="address the tracker gives clients "
                   "for this server (default: the address it connected from)")
    s.add_argument("--quiet", action="store_true", help="no session log")

    st = sub.add_parser("status", help="servers registered with a tracker and its queue")
    st.add_argument("--tracker", required=True, metavar="HOST:PORT", help="tracker address")
    st.add_argument("--key", default=None, help="also ask one free server of this key who "
                    "it is (CPU flags, versions)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")


def _wait_forever(children) -> int:
    """Block until SIGINT/SIGTERM or a child dies; then stop the children."""
    stop = {"sig": None}

    def handler(signum, _frame):
        stop["sig"] = signum

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while stop["sig"] is None:
            if not all(c.proc.is_alive() for c in children if c.proc is not None):
                print("qcompile rpc: the TVM process stopped", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        import psutil

        for c in children:
            # a child already gone: the tracker's stop handshake fails on its socket
            # (OSError, AssertionError on the reply, ValueError on its JSON); psutil's
            # errors come from killing the server's process tree
            try:
                c.terminate()
            except (OSError, AssertionError, ValueError, psutil.Error):
                pass
        for sig, h in old.items():
            signal.signal(sig, h)


def run(args) -> int:
    from ..tuning import rpc as rpcm

    if args.rpc_command == "tracker":
        tracker = rpcm.start_tracker(args.host, args.port,
                                     args.port_end or args.port + 10, silent=args.quiet)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"qcompile rpc tracker: listening on {args.host} (reachable from the "
                  "network): the servers it lists run any code a client sends them",
                  file=sys.stderr)
        print(f"qcompile rpc tracker: listening on {args.host}:{tracker.port}", flush=True)
        return _wait_forever([tracker])

    if args.rpc_command == "server":
        thost, tport = rpcm.parse_addr(args.tracker, "--tracker")
        print(rpcm.SECURITY_WARNING, file=sys.stderr, flush=True)
        server = rpcm.start_server((thost, tport), args.key, host=args.host, port=args.port,
                                   port_end=args.port_end or args.port + 100,
                                   name=args.name, silent=args.quiet,
                                   custom_addr=args.custom_addr)
        name = server.qcompile_name
        print(f"qcompile rpc server: {name} listening on {args.host}:{server.port}, key "
              f"{args.key!r}, tracker {thost}:{tport}", flush=True)
        return _wait_forever([server])

    # status
    host, port = rpcm.parse_addr(args.tracker, "--tracker")
    summary = rpcm.tracker_summary(host, port, args.timeout)
    probe = None
    if args.key:
        settings = rpcm.RPCSettings(host, port, args.key, session_timeout=args.timeout,
                                    connect_timeout=args.timeout)
        if rpcm.servers_for_key(summary, args.key):
            try:
                probe = rpcm.probe_server(settings) or {"name": "(plain TVM server)"}
            except rpcm.RPCError as err:
                probe = {"error": str(err)}
    if args.json:
        print(json.dumps({"tracker": f"{host}:{port}", **summary,
                          **({"probe": probe} if args.key else {})}, indent=2))
        return 0
    print(rpcm.format_status(summary, host, port))
    if args.key:
        if probe is None:
            print(f"\nno server registered with key {args.key!r}")
        elif "error" in probe:
            print(f"\nserver probe for {args.key!r}: {probe['error']}")
        else:
            flags = probe.get("cpu_flags")
            print(f"\none free server of {args.key!r}: {probe.get('name')} "
                  f"(TVM {probe.get('tvm', '?')}, qcompile {probe.get('qcompile', '?')}"
                  + (f", {len(flags)} CPU flags, avx512_vnni: {'avx512_vnni' in flags}"
                     if flags else "") + ")")
    return 0
