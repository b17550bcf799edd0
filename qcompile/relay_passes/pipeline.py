"""The ordered low-precision pipeline (DESIGN §1, steps 1-5).

`run(mod, spec, ctx)` applies the passes in order to a freshly imported Relax module. An fp32
model (no FakeQuantize / QuantizeLinear / QLinear* ops) passes through unchanged. The
`PassContext`-like `ctx` collects what each pass reports (ops left in float and why).
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class LowPrecisionContext:
    """What the passes need besides the module, and what they report back."""
    spec: Any                           # qcompile.targets.TargetSpec
    strict: bool = False                # an op left in float is an error, not a report line
    node_names: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[dict] = dataclasses.field(default_factory=list)

    def report(self, node: str, op: str, reason: str) -> None:
        self.notes.append({"node": node, "op": op, "reason": reason})


def passes(ctx: LowPrecisionContext) -> list:
    """The low-precision passes, in order. Empty until the passes land."""
    return []


def run(mod, ctx: LowPrecisionContext):
    for p in passes(ctx):
        mod = p(mod)
    return mod
