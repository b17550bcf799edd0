"""The ordered low-precision pipeline (docs/architecture.md, docs/low-precision.md: steps 1-4, and the report).

`run(mod, ctx)` applies the passes in order to a freshly imported Relax module:

  1. decompose_fake_quantize  FakeQuantize -> quantize + dequantize; weights -> int8 consts;
                              activation quantization canonicalized to uint8
  2. propagate_dequantize     dequantize moved below precision-preserving ops
  3. realize_integer_ops      conv2d / matmul / pools / bias add on integers (s32 + dequantize)
  4. fuse_requantize          dequantize + quantize -> requantize; quantized add / concat
  5. report_float_ops         what stayed f32 with a quantized input, by ONNX node (--strict:
                              an error)

An fp32 model (no FakeQuantize / quantize / dequantize) passes through unchanged. The
`ctx` collects what the passes report (ops left in float and why).
"""
from __future__ import annotations

import dataclasses
from typing import Any

QUANT_OPS = {"qcompile.fake_quantize", "relax.quantize", "relax.dequantize"}


@dataclasses.dataclass
class LowPrecisionContext:
    """What the passes need besides the module, and what they report back."""
    spec: Any                           # qcompile.targets.TargetSpec
    strict: bool = False                # an op left in float is an error, not a report line
    node_names: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[dict] = dataclasses.field(default_factory=list)
    unconverted: list[dict] = dataclasses.field(default_factory=list)

    def report(self, node: str, op: str, reason: str) -> None:
        entry = {"node": node, "op": op, "reason": reason}
        if entry not in self.notes:
            self.notes.append(entry)


def passes(ctx: LowPrecisionContext) -> list:
    """The low-precision passes, in order."""
    from .decompose_fake_quantize import DecomposeFakeQuantize
    from .fuse_requantize import FuseRequantize
    from .propagate_dequantize import PropagateDequantize
    from .realize_integer_ops import RealizeIntegerOps
    from .report_float_ops import ReportFloatOps

    return [DecomposeFakeQuantize(ctx), PropagateDequantize(ctx), RealizeIntegerOps(ctx),
            FuseRequantize(ctx), ReportFloatOps(ctx)]


def is_quantized(mod) -> bool:
    from tvm import relax

    found = False

    def visit(e):
        nonlocal found
        if isinstance(e, relax.Call) and getattr(e.op, "name", None) in QUANT_OPS:
            found = True

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return found


def run(mod, ctx: LowPrecisionContext):
    from .. import ops  # noqa: F401  (registers qcompile's ops)

    if not is_quantized(mod):
        return mod
    for p in passes(ctx):
        mod = p(mod)
    if ctx.strict and ctx.unconverted:
        from .report_float_ops import strict_error

        raise strict_error(ctx.unconverted)
    return mod
