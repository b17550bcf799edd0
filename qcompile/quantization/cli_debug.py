"""`qcompile debug FP32.onnx INT8.onnx --data DATA [--plot OUT.png|OUT.html] [--json OUT.json]`:
per-layer SQNR / cosine table of the quantized model against the fp32 one."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config as _config
from ..errors import QuantizationError
from .datasets import DatasetConfig
from .debug import compare
from .plot import write_plot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fp32", metavar="FP32.onnx", help="the fp32 model")
    parser.add_argument("quantized", metavar="INT8.onnx",
                        help="its quantized version (FakeQuantize or QDQ)")
    parser.add_argument("--subset-size", type=int, default=32,
                        help="samples compared (default 32)")
    parser.add_argument("--plot", metavar="OUT.png|OUT.html",
                        help="plot SQNR per layer (PNG needs Pillow)")
    parser.add_argument("--json", metavar="OUT.json", help="write the table as JSON")
    parser.add_argument("--rows", type=int, default=None,
                        help="print at most this many rows (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    _config.add_arguments(parser, DatasetConfig)


def run(args: argparse.Namespace) -> int:
    dcfg = _config.from_args(DatasetConfig, args)
    if not dcfg.data:
        raise QuantizationError("qcompile debug needs data: --data FILE_OR_FOLDER")
    res = compare(args.fp32, args.quantized, dcfg.data, dcfg, args.subset_size,
                  args.threads or None)
    print(res.table(args.rows))
    worst = sorted(res.quantizers, key=lambda q: q.sqnr_db)[:5]
    if worst:
        print("noisiest quantizers (own SQNR): " + ", ".join(
            f"{q.tensor} {q.sqnr_db:.1f} dB" for q in worst))
    if args.plot:
        print(f"wrote {write_plot(res, args.plot, Path(args.quantized).name)}")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0
