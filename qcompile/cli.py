"""The `qcompile` command line. Each subcommand lives in the module that owns its job and
exposes `add_arguments(parser)` and `run(args) -> int`; this file only wires them up.
User errors (QCompileError) print one clear message and exit with status 2."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "compile": ("qcompile.commands.compile", "fp32 ONNX -> PTQ -> int8 build, checked against "
                "fp32 on held-back samples"),
    "build": ("qcompile.commands.build", "compile an ONNX model into DIR/model.so + model.json"),
    "tune": ("qcompile.commands.tune", "tune a model's kernels into a tuning database"),
    "run": ("qcompile.commands.run", "run a build on .npy inputs"),
    "bench": ("qcompile.commands.bench", "measure a build's latency (and per-layer counters)"),
    "inspect": ("qcompile.commands.inspect", "print a build's per-op precision table"),
    "targets": ("qcompile.commands.targets", "list the targets (targets/*.toml)"),
    "demo": ("qcompile.commands.demo", "build and run a generated model on this CPU"),
    "quantize": ("qcompile.quantization.cli_quantize", "post-training quantization -> ONNX "
                 "with FakeQuantize (or QDQ)"),
    "debug": ("qcompile.quantization.cli_debug", "per-layer error of a quantized model vs fp32"),
    "rpc": ("qcompile.commands.rpc", "TVM RPC tracker/server for tuning on target machines"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcompile", description="Quantizing compiler on Apache TVM: ONNX -> tuned INT8 "
        "shared library for x86 CPUs and Intel GPUs.")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith(module.rsplit(".", 1)[0]):
                continue  # subcommand not available in this build of qcompile
            raise
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import QCompileError

    parser = make_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .util import versions

        for k, v in versions().items():
            print(f"{k} {v}")
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except QCompileError as err:
        print(f"qcompile {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qcompile {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
