"""The ONNX graph view the quantizer works on, and the clean-up it needs first.

`load_model()` reads a path or a `ModelProto`; `prepare()` returns a copy that:
  * names every node (an unnamed node takes its first output's name), so reports, ignored
    scopes and `qcompile debug` can refer to each node;
  * turns `Constant` nodes into initializers, so weights given as constants are seen as weights
    (PaddlePaddle exports such as PP-OCR do this);
  * folds an inference `BatchNormalization` into the `Conv` before it (the folded weight is what
    gets quantized, as OpenVINO does);
  * runs ONNX shape inference (ranks are needed for per-channel reductions).
Every change is recorded in `PrepareLog` and ends up in the quantization report.

`Graph` is a read-only index over a model: producers, consumers, initializers, topological
order.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, numpy_helper

from ..errors import ModelError, QuantizationError
from .opinfo import attr


def load_model(model: str | Path | ModelProto) -> ModelProto:
    """A copy of `model` (a path or a ModelProto); a clear error when it cannot be read."""
    if isinstance(model, ModelProto):
        m = ModelProto()
        m.CopyFrom(model)
        return m
    from ..frontend import large_model

    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"{path} is not a readable ONNX model: {err}") from err
    large_model.load_external_data(m, str(path), str(path))   # a clear error when missing
    return m


def opset_version(model: ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 0


class Graph:
    """Index over `model.graph` (rebuild it after editing the model)."""

    def __init__(self, model: ModelProto):
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.initializers = {t.name: t for t in g.initializer}
        self.producer = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i, t in enumerate(n.input):
                if t:
                    self.consumers[t].append((n, i))
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in g.output]
        self._const_cache: dict[str, np.ndarray] = {}
        self.value_info = {v.name: v for v in list(g.value_info) + list(g.input) + list(g.output)}

    def is_const(self, tensor: str) -> bool:
        return tensor in self.initializers

    def const(self, tensor: str) -> np.ndarray | None:
        """The initializer's value, or None when `tensor` is computed."""
        if tensor not in self.initializers:
            return None
        if tensor not in self._const_cache:
            self._const_cache[tensor] = numpy_helper.to_array(self.initializers[tensor])
        return self._const_cache[tensor]

    def _dims(self, tensor: str) -> list | None:
        """The tensor's dims from value_info (int, symbolic name or None each), else the
        constant's shape; None when neither is known."""
        from ..frontend.shapes import dims_of

        vi = self.value_info.get(tensor)
        if vi is None or not vi.type.HasField("tensor_type") or \
                not vi.type.tensor_type.HasField("shape"):
            c = self.const(tensor)
            return None if c is None else list(c.shape)
        return dims_of(vi)

    def static_shape(self, tensor: str) -> list[int] | None:
        """The tensor's dims when every one is known (value_info or constant), else None."""
        dims = self._dims(tensor)
        ok = dims is not None and all(isinstance(d, int) and d > 0 for d in dims)
        return dims if ok else None

    def rank(self, tensor: str) -> int | None:
        dims = self._dims(tensor)
        return None if dims is None else len(dims)

    def elem_type(self, tensor: str) -> int | None:
        vi = self.value_info.get(tensor)
        if vi is not None and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type
        if tensor in self.initializers:
            return self.initializers[tensor].data_type
        return None

    def is_float(self, tensor: str) -> bool:
        """float32, or of unknown type (checked again on the calibration data)."""
        return self.elem_type(tensor) in (onnx.TensorProto.FLOAT, None, 0)

    def topo_names(self) -> list[str]:
        return [n.name for n in self.nodes]


@dataclasses.dataclass
class PrepareLog:
    """What `prepare()` changed, for the report."""
    nodes_named: int = 0
    constants_to_initializers: int = 0
    batchnorms_folded: list[str] = dataclasses.field(default_factory=list)
    shape_inference: str = "ok"


def _name_nodes(model: ModelProto, log: PrepareLog) -> None:
    used = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    for n in model.graph.node:
        if n.name and n.name not in seen:
            seen.add(n.name)
            continue
        base = n.name or (n.output[0] if n.output and n.output[0] else n.op_type)
        name, k = base, 1
        while name in seen or (name in used and name != n.name):
            k += 1
            name = f"{base}_{k}"
        n.name = name
        seen.add(name)
        log.nodes_named += 1


def _constants_to_initializers(model: ModelProto, log: PrepareLog) -> None:
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1 and any(
                a.name in ("value", "value_float", "value_floats", "value_int", "value_ints")
                for a in n.attribute):
            a = n.attribute[0]
            if a.name == "value":
                t = onnx.TensorProto()
                t.CopyFrom(a.t)
            else:
                v = np.asarray(helper_value(a), dtype=np.float32 if "float" in a.name else np.int64)
                t = numpy_helper.from_array(v)
            t.name = n.output[0]
            model.graph.initializer.append(t)
            log.constants_to_initializers += 1
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def helper_value(a):
    return onnx.helper.get_attribute_value(a)


def _fold_batchnorm(model: ModelProto, log: PrepareLog) -> None:
    """Conv -> BatchNormalization (inference) becomes one Conv with scaled weight and bias."""
    g = Graph(model)
    remove = set()
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or any(bn.output[1:]) or attr(bn, "training_mode", 0):
            continue
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(g.consumers[conv.output[0]]) != 1 \
                or conv.output[0] in g.graph_outputs:
            continue
        params = [g.const(t) for t in bn.input[1:5]]
        w = g.const(conv.input[1])
        has_b = len(conv.input) > 2 and bool(conv.input[2])
        b = g.const(conv.input[2]) if has_b else np.zeros(w.shape[0] if w is not None else 0)
        if any(p is None for p in params) or w is None or b is None:
            continue
        scale, offset, mean, var = (p.astype(np.float64) for p in params)
        k = scale / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        w2 = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b2 = ((b.astype(np.float64) - mean) * k + offset).astype(np.float32)
        wn, bnm = conv.name + "/bn_folded_w", conv.name + "/bn_folded_b"
        model.graph.initializer.extend([numpy_helper.from_array(w2, wn),
                                        numpy_helper.from_array(b2, bnm)])
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, wn, bnm])
        conv.output[0] = bn.output[0]
        remove.add(bn.name)
        log.batchnorms_folded.append(bn.name)
    if remove:
        keep = [n for n in model.graph.node if n.name not in remove]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        _drop_unused_initializers(model)


def _drop_unused_initializers(model: ModelProto) -> None:
    used = {t for n in model.graph.node for t in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [i for i in model.graph.input
              if i.name in used or i.name not in {t.name for t in keep}]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def prepare(model: ModelProto, fold_batchnorm: bool = True) -> tuple[ModelProto, PrepareLog]:
    """A named, constant-free, BN-folded, shape-inferred copy of `model` (see module doc)."""
    m = ModelProto()
    m.CopyFrom(model)
    log = PrepareLog()
    if opset_version(m) < 11:
        raise QuantizationError(
            f"model opset {opset_version(m)} is older than 11; the quantizer needs opset >= 11 "
            "(Round, Clip with inputs). Convert it with onnx.version_converter first.")
    _constants_to_initializers(m, log)
    _name_nodes(m, log)
    if fold_batchnorm:
        _fold_batchnorm(m, log)
    # stale shapes from the exporter would mislead shape inference
    del m.graph.value_info[:]
    try:
        from ..frontend import large_model   # (above 2 GB: on a copy without the weights)

        m = large_model.infer_shapes(m, strict_mode=False, data_prop=True, inplace=True)
    except Exception as err:  # noqa: BLE001 - inference is best effort
        log.shape_inference = f"failed ({err}); ranks taken from initializers only"
    return m, log
