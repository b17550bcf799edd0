"""`qcompile quantize MODEL.onnx --data DATA [-o OUT.onnx] [options]` (wired up by qcompile/cli.py).

Exit status: 0 on success; 1 when the accuracy-aware target (--max-drop) was not met (the best
model found is still written); QCompileError subclasses propagate to the CLI (status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import config as _config
from ..errors import QuantizationError
from .api import quantize_detailed, save
from .config import QuantizeConfig
from .datasets import DatasetConfig
from .report import summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="fp32 ONNX model")
    parser.add_argument("-o", "--output", metavar="OUT.onnx",
                        help="quantized model (default: MODEL_int8.onnx next to MODEL)")
    parser.add_argument("--report", metavar="FILE.json",
                        help="also write the quantization report as JSON")
    _config.add_arguments(parser, QuantizeConfig)
    _config.add_arguments(parser, DatasetConfig)


def run(args: argparse.Namespace) -> int:
    cfg = _config.from_args(QuantizeConfig, args)
    dcfg = _config.from_args(DatasetConfig, args)
    if not dcfg.data:
        raise QuantizationError("qcompile quantize needs calibration data: --data FILE_OR_FOLDER "
                                "(.npy, .npz, a folder of .npy/.npz files or images)")
    out = Path(args.output) if getattr(args, "output", None) else \
        Path(args.model).with_name(Path(args.model).stem + "_int8.onnx")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    result = quantize_detailed(args.model, dcfg.data, config=cfg, dataset_config=dcfg, log=log)
    model = result.model()
    data = save(model, out)
    print(summary(result.report))
    print(f"wrote {out} ({cfg.format})" + (
        f" with its weights in {data} (ONNX external data: the model is over 2 GB; keep the "
        "two files in one folder)" if data else ""))
    if getattr(args, "report", None):
        Path(args.report).write_text(json.dumps(result.report, indent=1, default=str))
        print(f"wrote {args.report}")
    aa = result.report.get("accuracy_aware")
    if aa and not aa["met"]:
        print(f"accuracy target not met: drop {aa['drop_final']:.4g} > --max-drop "
              f"{aa['max_drop']:g} after reverting {len(aa['reverted'])} ops", file=sys.stderr)
        return 1
    return 0
