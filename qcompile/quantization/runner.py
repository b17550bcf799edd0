"""Running ONNX models for calibration and evaluation with ONNX Runtime (CPU).

`Runner` wraps an `InferenceSession` over a `ModelProto`, optionally exposing intermediate
tensors as extra graph outputs; `run_batches()` feeds it samples (concatenated along the batch
axis when the model's batch dimension is dynamic and `batch_size > 1`). A model over 2 GB is
written with external data to a temporary directory and the session opened from there
(frontend/large_model.py); the extra outputs are then added to the weight-less copy only.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from ..errors import QuantizationError
from ..frontend import large_model

# calibration passes keep this many runs of one session in flight, each on its share of the
# threads (`Runner.run_all`)
RUNS_IN_FLIGHT = 2


def _session(model: ModelProto, threads: int | None, optimize: bool, edit=None):
    """(session of `edit(model)` or `model`, temporary directory to keep alive or None)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    try:
        return large_model.ort_session(model, so, ["CPUExecutionProvider"], edit=edit)
    except Exception as err:  # noqa: BLE001 - ORT's errors have no common base; re-raised
        raise QuantizationError(f"ONNX Runtime cannot load the model ({model.graph.name}): "
                                f"{err}") from err


def with_outputs(model: ModelProto, tensors: Iterable[str]) -> ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (float32 tensors)."""
    m = ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    types = elem_types(m)
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(
                t, types.get(t) or TensorProto.FLOAT, None))
            have.add(t)
    return m


def elem_types(model: ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can type."""
    g = model.graph
    vis = list(g.value_info) + list(g.input) + list(g.output)
    if len(g.value_info) < len(g.node) // 2:
        try:   # (value types only: above 2 GB on a copy without the weights' data)
            vis += list(onnx.shape_inference.infer_shapes(
                large_model.strip_if_large(model)).graph.value_info)
        except Exception:  # noqa: BLE001 - typing is best effort
            pass
    out = {v.name: v.type.tensor_type.elem_type for v in vis if v.type.HasField("tensor_type")}
    out.update({t.name: t.data_type for t in g.initializer})
    return {k: v for k, v in out.items() if v}


class Runner:
    """An ORT session; `run(feed)` returns every graph output by name.

    `edit(m) -> ModelProto`, if given, returns the model to run instead of `m` (nodes,
    initializers, outputs added; `m` itself must stay unchanged). Over 2 GB `m` is a copy
    without the weights' data, so an edit there copies no weights, where a caller that
    copies `model` to extend it holds the weights twice."""

    def __init__(self, model: ModelProto, extra_outputs: Iterable[str] = (),
                 threads: int | None = None, optimize: bool = True,
                 edit: Callable[[ModelProto], ModelProto] | None = None, workers: int = 1):
        extra = list(extra_outputs)
        total = int(threads or os.cpu_count() or 1)
        # `run_all` keeps `workers` runs in flight, each on total // workers threads
        self.workers = max(1, min(int(workers), total))
        threads = max(1, total // self.workers)
        ran: list[ModelProto] = []
        user_edit = edit

        def edit(m: ModelProto) -> ModelProto:
            m = user_edit(m) if user_edit is not None else m
            ran.append(with_outputs(m, extra) if extra else m)
            return ran[-1]

        # _tmpdir: the external data of a model over 2 GB, which the session may map
        self.session, self._tmpdir = _session(model, threads, optimize, edit)
        self.model = ran[-1]   # what ONNX Runtime runs (over 2 GB: without the weights' data)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def run(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None
            ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            vals = self.session.run(names, feed)
        except Exception as err:  # noqa: BLE001 - ORT's errors have no common base; re-raised
            shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in feed.items()}
            raise QuantizationError(
                f"running the model on a calibration sample failed: {err}\n"
                f"sample shapes: {shapes}; model inputs: "
                f"{ {k: (i.shape, i.type) for k, i in self.inputs.items()} }. "
                "Check --data (and the image options) against the model's inputs.") from err
        return dict(zip(names, vals))

    def run_all(self, feeds: Iterable[dict[str, np.ndarray]], outputs: list[str] | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        """`run` of every feed, yielded in order, with `workers` runs in flight at once (an
        ONNX Runtime session runs concurrent calls; ResNet-50 on 2 cores: two 1-thread runs
        at a time take 0.87-0.91x the time of one 2-thread run after the other). At most
        `workers + 1` results are held."""
        if self.workers == 1:
            for feed in feeds:
                yield self.run(feed, outputs)
            return
        import collections
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            pending: collections.deque = collections.deque()
            for feed in feeds:
                pending.append(pool.submit(self.run, feed, outputs))
                if len(pending) > self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def dynamic_batch(self) -> bool:
        return all(not isinstance(i.shape[0], int) if i.shape else False
                   for i in self.inputs.values())


def batches(samples: Iterable[dict[str, np.ndarray]], batch_size: int
            ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Group samples into (feed, n_samples) along axis 0."""
    buf: list[dict[str, np.ndarray]] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= batch_size:
            yield _concat(buf), len(buf)
            buf = []
    if buf:
        yield _concat(buf), len(buf)


def _concat(buf):
    if len(buf) == 1:
        return buf[0]
    return {k: np.concatenate([b[k] for b in buf], axis=0) for k in buf[0]}


def split_outputs(out: list[np.ndarray], n: int) -> list[list[np.ndarray]]:
    """Per-sample outputs of a batched run (axis 0)."""
    if n == 1:
        return [out]
    return [[o[i:i + 1] for o in out] for i in range(n)]


def input_specs(model: ModelProto) -> list[tuple[str, list, int]]:
    """(name, dims (int or None for dynamic), elem type) of each real graph input."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim]
        specs.append((i.name, dims, tt.elem_type))
    return specs


def np_dtype(elem_type: int):
    return helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else np.float32


__all__ = ["Runner", "batches", "with_outputs", "input_specs", "split_outputs", "elem_types"]
