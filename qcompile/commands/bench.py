"""Measure a build's latency: median/p90/min/max and throughput, optionally per-layer
counters from the Relax VM profiler (-report_type average_counters), like benchmark_app."""
from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("build_dir", help="build directory from `qcompile build`")
    p.add_argument("-niter", "--niter", type=int, default=100, help="timed iterations")
    p.add_argument("-nwarmup", "--warmup", dest="warmup", type=int, default=5,
                   help="untimed warm-up iterations")
    p.add_argument("-report_type", "--report-type", dest="report_type", default="none",
                   choices=["none", "average_counters"], help="also print per-layer counters")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="inputs as .npy (default: random)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args) -> int:
    from .. import bench
    from ..errors import InputError
    from ..runtime import load
    from .run import parse_inputs

    if args.niter < 1:
        raise InputError(f"-niter must be >= 1 (got {args.niter})")
    model = load(args.build_dir, profile=args.report_type != "none")
    feed = parse_inputs(args.input, [t.name for t in model.inputs]) if args.input \
        else model.random_inputs()
    batch = model.inputs[0].shape[0] if model.inputs and model.inputs[0].shape else 1
    stats = bench.latency_stats(model.time_runs(feed, args.niter, args.warmup), batch)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{args.build_dir}: target {model.meta['target']['name']}")
        print(bench.format_stats(stats))
    if args.report_type == "average_counters":
        print(bench.counters(model, feed, model.meta))
    return 0
