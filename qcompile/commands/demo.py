"""Build and run a generated model on this CPU: no files needed. Prints the output check
against ONNX's reference evaluator and the latency."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("-o", "--output", default=None, help="where to keep the model and build "
                   "(default: a temporary directory)")
    p.add_argument("-niter", "--niter", type=int, default=50, help="timed runs")


def run(args) -> int:
    from ..demo import run_demo

    return run_demo(args.output, args.niter)
