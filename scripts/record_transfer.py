#!/usr/bin/env python3
"""How many tuning records transfer between differently quantized builds of one model.

MetaSchedule keys a record on the structure of the fused PrimFunc (its workload). This
script builds the fused module of each ONNX model exactly as `qcompile build` does (import,
low-precision passes, int8 dispatch, fusion) and counts, for the int8 kernels (PrimFuncs with
a qcompile template block) of the first model, how many have a workload-identical kernel in
each other model: those reuse the first model's tuning records.

    python scripts/record_transfer.py W/resnet50_qc.onnx W/resnet50_nncf.onnx [--target host]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def int8_workloads(path: str, target_name: str) -> list[int]:
    from qcompile import targets
    from qcompile.tuning.workloads import int8_workload_hashes

    return int8_workload_hashes(path, targets.resolve(target_name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--target", default="host")
    args = ap.parse_args(argv)
    base = int8_workloads(args.models[0], args.target)
    print(f"{args.models[0]}: {len(base)} int8 kernels ({len(set(base))} distinct workloads)")
    for other in args.models[1:]:
        have = set(int8_workloads(other, args.target))
        hit = sum(h in have for h in base)
        print(f"{other}: {hit} of {len(base)} kernels of the first model have a record-"
              f"compatible kernel here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
