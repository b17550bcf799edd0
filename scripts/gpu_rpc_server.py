#!/usr/bin/env python3
"""TVM RPC server for tuning qcompile's OpenCL kernels on this machine's GPU.

    python scripts/gpu_rpc_server.py --tracker HOST:PORT [--key intel-gpu] [--port 9090]

Run it on the machine with the Intel GPU (Debian: `apt-get install intel-opencl-icd`,
`pip install qcompile pyopencl`); it registers with the tracker under `--key` and serves
`qcompile.gpu.measure` (`qcompile.gpu.remote.server_init`), which
`qcompile.gpu.tuning.OpenCLRPCRunner` calls with each candidate's OpenCL source and launch
list. The tuning machine then passes the tracker and key to the OpenCL RPC runner, e.g.

    from qcompile.gpu.tuning import builder_and_runner
    pair = builder_and_runner(spec, rpc={"tracker_host": HOST, "tracker_port": PORT,
                                         "tracker_key": "intel-gpu"})

Set QCOMPILE_OPENCL_DEVICE to pick the device when the machine has several.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracker", required=True, help="tracker address HOST:PORT")
    ap.add_argument("--key", default="intel-gpu", help="device key to register under")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--port-end", type=int, default=9199)
    args = ap.parse_args(argv)

    from tvm import rpc

    from qcompile.gpu import opencl, remote

    dev = opencl.describe(opencl.pick_device())
    host, port = args.tracker.rsplit(":", 1)
    server = rpc.Server(host=args.host, port=args.port, port_end=args.port_end, key=args.key,
                        tracker_addr=(host, int(port)), server_init_callback=remote.server_init)
    print(f"qcompile OpenCL RPC server on port {server.port}, key {args.key!r}, device "
          f"{dev['name']} ({dev['platform']}; integer dot product: "
          f"{dev['integer_dot_product']})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
