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
    nodes: tuple[str, ...] = ()  # the ONNX nodes the kernel computes (filled by `name_nodes`)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["nodes"] = list(self.nodes)
        return d

    def describe(self) -> str:
        """One line for logs, errors and `qcompile inspect`."""
        nodes = f" [nodes {', '.join(self.nodes)}]" if self.nodes else ""
        return f"{self.kernel}{nodes}: {self.stage} did not apply -> {self.instead} ({self.reason})"


class FallbackLog(list):
    """A list of `Fallback`s shared by the build's scheduling stages."""

    def add(self, kernel: str, stage: str, instead: str, err: BaseException | str) -> None:
        text = str(err).strip().splitlines()
        self.append(Fallback(kernel, stage, instead, text[-1] if text else type(err).__name__))

    def name_nodes(self, kernel_map: dict[str, list[str]], node_names: dict[str, str]) -> None:
        """Fill each entry's `nodes` with the ONNX node names its kernel computes.

        `kernel_map` maps a fused PrimFunc name to the Relax bindings it computes (codegen's
        map), `node_names` a sanitized binding name to its ONNX node. An entry whose kernel
        is a binding itself (a dispatch entry, recorded before fusion) is renamed to the
        fused kernel that computes it."""
        from .codegen import onnx_nodes

        kernel_of = {var: fn for fn, names in kernel_map.items() for var in names}
        for i, f in enumerate(self):
            if f.nodes:
                continue
            fn = f.kernel.split(":")[0]  # generic-schedule entries are "kernel:block"
            if fn not in kernel_map and fn in kernel_of:  # a binding: name its kernel
                f = dataclasses.replace(f, kernel=kernel_of[fn] + f.kernel[len(fn):])
                fn = kernel_of[fn]
            self[i] = dataclasses.replace(
                f, nodes=tuple(onnx_nodes(kernel_map.get(fn, [fn]), node_names)))

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
