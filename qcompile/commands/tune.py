"""Tune a model's kernels into a tuning database (MetaSchedule), locally or on target machines.

  qcompile tune MODEL --target T --trials N [--tuning-db DIR]          measure on this machine
  qcompile tune MODEL --target T --rpc HOST:PORT --key KEY --trials N  measure on the boards
                                                                       of a TVM RPC tracker

Candidates are built here and measured where the model will run. The database is safe to
interrupt at any point (Ctrl-C, kill -9): rerun the same command and it resumes, skipping
what was measured. `--time-budget 20m` bounds the run. Build with the records:
`qcompile build MODEL --target T --tuning-db DIR -o OUT` (or pass -o here to do both).
Without --trials, each kernel gets the target's default (`trials_per_task`, targets/*.toml).
"""
from __future__ import annotations

import json
import sys

from ..build import BuildConfig, build
from ..config import add_arguments as add_config_arguments, from_args

DEFAULT_DB = "qcompile-tuning"


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", default=None, help="also build the model into this "
                   "directory after tuning")
    add_config_arguments(p, BuildConfig)
    p.add_argument("--json", action="store_true", help="print the tuning summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from .. import targets

    config = from_args(BuildConfig, args)
    if not config.tuning_db:
        spec = targets.resolve(config.target, cross=config.cross or bool(config.rpc))
        config.tuning_db = f"{DEFAULT_DB}/{spec.name}"
    if config.trials <= 0:
        config.trials = -1  # the target's trials_per_task for every kernel (build.py)
    from ..tuning.tuner import TuneSummary, TuningInterrupted

    try:
        res = build(args.model, config, args.output, quiet=args.quiet,
                    tune_only=args.output is None)
    except TuningInterrupted as stop:
        print(stop.summary.table() if stop.summary.per_task else "nothing measured")
        print(f"qcompile tune: interrupted; the records measured so far are in "
              f"{config.tuning_db}. Run the same command again to resume.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"qcompile tune: aborted; the database {config.tuning_db} is valid. Run the "
              "same command again to resume.", file=sys.stderr)
        return 130
    summary = res.meta.get("tuning") or {}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    ts = TuneSummary(**summary)
    print(ts.table() if ts.per_task else f"nothing tuned ({ts.stopped_by})")
    if ts.repairs:
        print("\n".join(ts.repairs))
    target = res.meta.get("target", {}).get("name", config.target)
    print(f"tuning database: {config.tuning_db} (target {target})")
    if args.output is None:
        spec = targets.resolve(target, cross=True)
        print(f"build with: qcompile build {args.model} --target {target} "
              f"--tuning-db {config.tuning_db} -o OUT"
              + ("" if spec.runnable_here() else " --cross"))
    return 0
