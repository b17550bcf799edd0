"""ONNX -> Relax import.

`import_onnx(model, input_shapes, input_values)` loads and validates the model, freezes the
inputs given a value (`--input-value`: they become initializers), fixes input shapes, runs
shape inference and constant folding (which also replaces an `If` with a constant condition
by its taken branch), checks every op type against the converters (one error listing all
unsupported op types with their node names, before any compile work), then imports through
TVM's Relax importer extended by qcompile's converter registry. Nodes left inside the bodies
of If/Loop/Scan are listed in `ImportedModel.control_flow` (the precision table shows them).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections import defaultdict

import onnx

from ..errors import ModelError, QCompileError, UnsupportedOpsError
from .control_flow import apply_input_flags, subgraph_nodes
from .fold import fold_to_fixpoint
from .loader import load_model, opset_of
from .registry import patched_importer, registered_op_types, sanitize, tvm_supported_op_types
from .shapes import check_tensor_io, dims_of, elem_dtype, graph_inputs, infer_shapes


@dataclasses.dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass
class ImportedModel:
    mod: "tvm.IRModule"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str
    onnx_model: onnx.ModelProto
    node_names: dict[str, str]          # sanitized Relax var name -> ONNX node name
    node_op_types: dict[str, str]       # ONNX node name -> op type
    folded_nodes: int
    # nodes inside If/Loop/Scan bodies left in the graph (control_flow.subgraph_nodes)
    control_flow: list[dict] = dataclasses.field(default_factory=list)


def supported_op_types() -> set[str]:
    return tvm_supported_op_types() | registered_op_types()


def check_supported(model: onnx.ModelProto, source: str) -> None:
    supported = supported_op_types()
    missing: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(model.graph.node):
        if node.op_type not in supported:
            missing[node.op_type].append(node.name or f"#{i}")
    if missing:
        raise UnsupportedOpsError(dict(missing), source)


def prepare(model: str | os.PathLike | onnx.ModelProto,
            input_shapes: dict[str, tuple[int, ...]] | None = None,
            input_values: dict[str, object] | None = None):
    """Load, freeze inputs, fix shapes, infer, fold: the ONNX-level half of the import (no
    TVM). input_values: {input name: value(s)} (`--input-value`), dtype from the input."""
    proto, source = load_model(model)
    check_tensor_io(proto, source)
    proto = apply_input_flags(proto, input_shapes, input_values, source)
    proto = infer_shapes(proto, source)
    proto, folded = fold_to_fixpoint(proto, source)
    check_supported(proto, source)
    return proto, source, folded


def import_onnx(model: str | os.PathLike | onnx.ModelProto,
                input_shapes: dict[str, tuple[int, ...]] | None = None,
                input_values: dict[str, object] | None = None) -> ImportedModel:
    proto, source, folded = prepare(model, input_shapes, input_values)
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    inputs = [TensorSpec(vi.name, tuple(dims_of(vi)), elem_dtype(vi)) for vi in graph_inputs(proto)]
    shape_dict = {t.name: list(t.shape) for t in inputs}
    dtype_dict = {t.name: t.dtype for t in inputs}
    try:
        with patched_importer(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_onnx(proto, shape_dict=shape_dict, dtype_dict=dtype_dict,
                            opset=opset_of(proto), keep_params_in_input=False)
    except QCompileError:  # ModelError, QuantizationError from a converter: already clear
        raise
    except Exception as err:  # noqa: BLE001 - TVM's converters raise any type; ModelError
        raise ModelError(f"importing {source} into Relax failed: {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}") from err
    ret = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else mod["main"].body.ty
    ret_fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outputs = []
    for vi, ty in zip(proto.graph.output, ret_fields):
        shape = tuple(int(d) for d in ty.shape) if ty.shape is not None else ()
        outputs.append(TensorSpec(vi.name, shape, str(ty.dtype)))
    node_names = {}
    op_types = {}
    for i, n in enumerate(proto.graph.node):
        name = n.name or f"#{i}"
        node_names[sanitize(name)] = name
        op_types[name] = n.op_type
    return ImportedModel(mod=mod, inputs=inputs, outputs=outputs, source=source,
                         onnx_model=proto, node_names=node_names, node_op_types=op_types,
                         folded_nodes=folded, control_flow=subgraph_nodes(proto))
