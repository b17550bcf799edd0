"""Where a build did less than its best, as data (model.json `fallbacks`).

Every place in the build that gives up on its preferred path (an x86 int8 kernel template
that does not apply, a generic schedule step a function's structure defeats) appends one
entry: the kernel (fused PrimFunc) name, the stage that gave up, what the kernel runs
instead, and TVM's reason. `qcompile inspect` shows them; `qcompile build --strict` fails
on any.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Fallback:
    kernel: str      # fused PrimFunc name (model.json `kernels[].function`)
    stage: str       # e.g. "x86 int8 template schedule", "generic schedule"
    instead: str     # what runs: "unscheduled (serial)", "outer loop parallel only", ...
    reason: str      # the last line of TVM's error

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FallbackLog(list):
    """A list of `Fallback`s shared by the build's scheduling stages."""

    def add(self, kernel: str, stage: str, instead: str, err: BaseException | str) -> None:
        text = str(err).strip().splitlines()
        self.append(Fallback(kernel, stage, instead, text[-1] if text else type(err).__name__))

    def to_list(self) -> list[dict]:
        return [f.to_dict() for f in self]


def schedule_errors() -> tuple[type[BaseException], ...]:
    """What TVM raises when a schedule primitive refuses (TVM 0.27 has no
    `tvm.error.TVMError`, so `except tvm.error.TVMError` raised AttributeError; its errors
    derive from RuntimeError)."""
    import tvm
    from tvm.s_tir.schedule import ScheduleError

    return (ScheduleError, tvm.error.InternalError)


def tvm_errors() -> tuple[type[BaseException], ...]:
    """`schedule_errors()` plus the ValueError TVM's Python wrappers raise for arguments a
    function's structure does not allow (a whole schedule recipe giving up)."""
    return (*schedule_errors(), ValueError)
