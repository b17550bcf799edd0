"""The statistics pass's reductions, computed inside the ONNX Runtime session.

`collect` needs, per activation tensor and batch: min, max, whether every value is finite,
and (for the histogram estimators) an evenly strided sample of about `sample` values. Exposing
each whole tensor as a graph output costs a copy of every activation per sample (60 MB per
ResNet-50 sample) and numpy passes over it; here the session returns scalars and the sample:

    t -> ReduceMin, ReduceMax, ReduceSum        (a non-finite sum: NaN / Inf somewhere)
    t -> Reshape [-1] -> Slice(start = offset mod step, step)     (when a histogram is kept)

`offset` is one int64 graph input that moves on every batch, so that over the calibration set
the sample visits every position; `step` is prime, as in `TensorStats.update`. Only tensors whose
shape is static get the in-graph form; the others (a dynamic batch) are exposed whole.
`collect` re-runs a batch with whole tensors when a sum is not finite, so NaN / Inf values are
counted exactly (`TensorStats.non_finite`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .graph import Graph, opset_version
from .statistics import TensorStats, sample_offset, sample_step

OFFSET = "qcompile/statistics/offset"


@dataclasses.dataclass
class Reduced:
    """One tensor's session outputs."""
    tensor: str
    size: int
    min: str
    max: str
    sum: str
    sample: str | None      # the strided sample (None: no histogram)
    step: int


def build(model: ModelProto, g: Graph, tensors: list[str], bins: int | None, sample: int
          ) -> tuple[Callable[[ModelProto], ModelProto] | None, list[Reduced], list[str]]:
    """(`edit` that turns the model into the statistics model, for `Runner(edit=)`; the
    tensors reduced in it; the tensors to expose whole). No edit: nothing reduced."""
    if opset_version(model) < 10:           # Slice with inputs; before that, expose them
        return None, [], list(tensors)
    nodes, inits, outs, reduced, whole = [], [], [], [], []
    flat = "qcompile/statistics/flat_shape"
    for t in tensors:
        dims = g.static_shape(t)
        size = int(np.prod(dims)) if dims is not None else None
        if size is None or g.elem_type(t) != TensorProto.FLOAT:
            whole.append(t)
            continue
        base = f"{t}/qcompile_stats"
        r = Reduced(t, size, base + "/min", base + "/max", base + "/sum", None, 1)
        nodes += [helper.make_node(op, [t], [o], name=o, keepdims=0)
                  for op, o in (("ReduceMin", r.min), ("ReduceMax", r.max), ("ReduceSum", r.sum))]
        outs += [r.min, r.max, r.sum]
        if bins:
            r.step = sample_step(size, sample)
            r.sample = base + "/sample"
            if r.step == 1:
                nodes.append(helper.make_node("Reshape", [t, flat], [r.sample], name=r.sample))
            else:
                inits += [numpy_helper.from_array(np.array([r.step], np.int64), base + "/step"),
                          numpy_helper.from_array(np.array([size], np.int64), base + "/end")]
                nodes += [
                    helper.make_node("Reshape", [t, flat], [base + "/flat"], name=base + "/flat"),
                    helper.make_node("Mod", [OFFSET, base + "/step"], [base + "/start"],
                                     name=base + "/start"),
                    helper.make_node("Slice", [base + "/flat", base + "/start", base + "/end",
                                               "qcompile/statistics/axis0", base + "/step"],
                                     [r.sample], name=r.sample)]
            outs.append(r.sample)
        reduced.append(r)
    if not reduced:
        return None, [], list(tensors)
    inits += [numpy_helper.from_array(np.array([-1], np.int64), flat),
              numpy_helper.from_array(np.array([0], np.int64), "qcompile/statistics/axis0")]

    def edit(model: ModelProto) -> ModelProto:
        m = ModelProto()
        m.CopyFrom(model)
        m.graph.node.extend(nodes)
        m.graph.initializer.extend(inits)
        m.graph.input.append(helper.make_tensor_value_info(OFFSET, TensorProto.INT64, [1]))
        m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                              for o in outs)
        return m
    return edit, reduced, whole


def offset(batch: int) -> np.ndarray:
    """The `OFFSET` input of batch number `batch` (the same walk as `TensorStats.update`)."""
    return np.array([sample_offset(batch)], np.int64)


def finite(out: dict[str, np.ndarray], reduced: list[Reduced]) -> bool:
    return all(np.isfinite(out[r.sum]) for r in reduced)


def add(stats: dict[str, TensorStats], out: dict[str, np.ndarray], reduced: list[Reduced],
        bins: int | None) -> None:
    """Add one batch's reduced outputs (all finite: see `finite`)."""
    for r in reduced:
        stats[r.tensor].add_reduced(float(out[r.min]), float(out[r.max]), r.size,
                                    out[r.sample] if r.sample else None, bins)


def outputs(reduced: list[Reduced]) -> list[str]:
    return [o for r in reduced for o in (r.min, r.max, r.sum, r.sample) if o]


__all__ = ["build", "offset", "finite", "add", "outputs", "OFFSET", "Reduced"]
