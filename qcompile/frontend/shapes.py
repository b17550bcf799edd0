"""Fix graph input shapes (`--input-shape name=1,3,224,224`) and run ONNX shape inference.

Expects: a ModelProto. Guarantees: every graph input (that is not an initializer) has a fully
static shape, or an InputError names the input, its dims and the flag to pass.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..errors import InputError, ModelError
from . import large_model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_tensor_io(model: onnx.ModelProto, source: str) -> None:
    """Graph inputs and outputs must be tensors: sequences, maps and optionals are not
    compiled (a ModelError naming them, not a crash further down)."""
    for kind, vis in (("input", graph_inputs(model)), ("output", model.graph.output)):
        for vi in vis:
            which = vi.type.WhichOneof("value")
            if which not in (None, "tensor_type"):
                raise ModelError(f"{kind} {vi.name!r} of {source} is a {which.replace('_type', '')}"
                                 "; qcompile compiles models whose inputs and outputs are "
                                 "tensors")


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None,
                     source: str = "model", require_static: bool = True) -> onnx.ModelProto:
    """Set the `--input-shape` dims of `model`'s inputs (a copy). Unless `require_static`
    is False (`qcompile quantize`, where the data gives the shapes), an input left with a
    dynamic dim is an `InputError` naming the flag to pass."""
    shapes = dict(shapes or {})
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise InputError(f"--input-shape names {unknown} that are not inputs of {source}; "
                         f"its inputs are {names}")
    model = large_model.copy(model) if shapes else model   # (works above 2 GB)
    dynamic: list[tuple[str, list]] = []   # inputs left with a dynamic dim
    for vi in graph_inputs(model):
        cur = dims_of(vi)
        if vi.name in shapes:
            new = shapes[vi.name]
            if cur is not None and len(cur) != len(new):
                raise InputError(
                    f"--input-shape {vi.name}={','.join(map(str, new))} has rank {len(new)}, "
                    f"but input {vi.name!r} of {source} has rank {len(cur)} (dims {cur})")
            for c, n in zip(cur or [], new):
                if isinstance(c, int) and c > 0 and c != n:
                    raise InputError(
                        f"--input-shape {vi.name}: dim {c} of {source} is fixed and cannot "
                        f"become {n} (model dims {cur})")
            tt = vi.type.tensor_type
            tt.ClearField("shape")
            for n in new:
                tt.shape.dim.add().dim_value = int(n)
            continue
        if require_static and (cur is None or any(not (isinstance(d, int) and d > 0)
                                                   for d in cur)):
            dynamic.append((vi.name, cur))
    if dynamic:
        def hint(cur):
            return ",".join(str(d) if isinstance(d, int) and d > 0 else
                            (d if isinstance(d, str) and d else "N") for d in cur) \
                if cur else "D1,D2,..."
        symbols = sorted({d for _, cur in dynamic for d in (cur or []) if isinstance(d, str)})
        raise InputError(
            f"{source} has {len(dynamic)} input(s) with a dynamic or unknown shape: "
            + "; ".join(f"{n!r} {cur}" for n, cur in dynamic)
            + (f" (symbolic dims: {', '.join(symbols)})" if symbols else "")
            + ". qcompile compiles static shapes: pass "
            + " ".join(f"--input-shape {n}={hint(cur)}" for n, cur in dynamic)
            + " with every symbolic dim replaced by its size (e.g. batch 1)")
    return model


# Ops outside the ONNX domain whose output has the type and shape of their first input.
# ONNX shape inference does not know them and stops there, so a Shape op downstream of a
# FakeQuantize (PP-OCRv4's attention reshapes) would stay computed and the import fail.
SHAPE_PRESERVING_CUSTOM_OPS = {("org.openvinotoolkit", "FakeQuantize"), ("", "FakeQuantize")}


def inference_errors() -> tuple[type[BaseException], ...]:
    """What `onnx.shape_inference.infer_shapes` raises: its C++ errors (InferenceError,
    ValidationError, SchemaError; RuntimeError / ValueError for other C++ exceptions) and
    protobuf's (EncodeError for a model over 2 GB)."""
    from google.protobuf.message import Error as ProtobufError

    return (onnx.shape_inference.InferenceError, onnx.checker.ValidationError,
            onnx.defs.SchemaError, ProtobufError, RuntimeError, ValueError)


def infer_shapes(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """ONNX shape inference (with data propagation), carried through the shape-preserving
    custom ops (FakeQuantize): inference runs once on a copy where each of them is an
    Identity of its first input, and the value types it finds are written into the model.
    Above 2 GB it runs on a copy without the weights' data (large_model.infer_shapes)."""
    custom = [i for i, n in enumerate(model.graph.node)
              if (n.domain, n.op_type) in SHAPE_PRESERVING_CUSTOM_OPS]

    def stand_in(m: onnx.ModelProto) -> None:
        for i in custom:
            node = m.graph.node[i]
            m.graph.node[i].CopyFrom(
                helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                 name=node.name))

    try:
        return large_model.infer_shapes(model, stand_in=stand_in if custom else None,
                                        strict_mode=False, data_prop=True)
    except inference_errors() as err:
        raise ModelError(f"ONNX shape inference failed on {source}: {err}") from err


def elem_dtype(vi: onnx.ValueInfoProto) -> str:
    return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name \
        if vi.type.tensor_type.elem_type != TensorProto.UNDEFINED else "float32"
