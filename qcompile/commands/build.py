"""Compile an ONNX model (fp32, QDQ or with FakeQuantize) into DIR/model.so + DIR/model.json."""
from __future__ import annotations

from ..build import BuildConfig, build
from ..config import add_arguments as add_config_arguments, from_args


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="build directory to write")
    add_config_arguments(p, BuildConfig)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args) -> int:
    res = build(args.model, from_args(BuildConfig, args), args.output, quiet=args.quiet)
    if not args.quiet:
        print(res.meta["precision_summary"])
    return 0
