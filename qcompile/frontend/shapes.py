"""Fix graph input shapes (`--input-shape name=1,3,224,224`) and run ONNX shape inference.

Expects: a ModelProto. Guarantees: every graph input (that is not an initializer) has a fully
static shape, or an InputError names the input, its dims and the flag to pass.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..errors import InputError, ModelError


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
    model = onnx.ModelProto.FromString(model.SerializeToString()) if shapes else model
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
            hint = ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in (cur or []))
            raise InputError(
                f"input {vi.name!r} of {source} has a dynamic or unknown shape {cur}; qcompile "
                f"compiles static shapes: pass --input-shape {vi.name}={hint or 'D1,D2,...'} "
                "with the N filled in (e.g. batch 1)")
    return model


# Ops outside the ONNX domain whose output has the type and shape of their first input.
# ONNX shape inference does not know them and stops there, so a Shape op downstream of a
# FakeQuantize (PP-OCRv4's attention reshapes) would stay computed and the import fail.
SHAPE_PRESERVING_CUSTOM_OPS = {("org.openvinotoolkit", "FakeQuantize"), ("", "FakeQuantize")}


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:
        raise ModelError(f"ONNX shape inference failed on {source}: {err}") from err


def _static(vi: onnx.ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    return tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)


def infer_shapes(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """ONNX shape inference, carried through the shape-preserving custom ops (FakeQuantize)."""
    for _ in range(64):
        model = _infer(model, source)
        typed = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)
                 + list(model.graph.output) if _static(vi)}
        typed.update({t.name: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                      for t in model.graph.initializer})
        added = {}
        for node in model.graph.node:
            if (node.domain, node.op_type) not in SHAPE_PRESERVING_CUSTOM_OPS:
                continue
            out = node.output[0]
            if out in typed or not node.input or node.input[0] not in typed:
                continue
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(typed[node.input[0]])
            vi.name = out
            added[out] = vi
            typed[out] = vi
        if not added:
            return model
        # replace what inference knew of them (a shape with unknown dims from an earlier round)
        keep = [vi for vi in model.graph.value_info if vi.name not in added]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep + list(added.values()))
    return model


def elem_dtype(vi: onnx.ValueInfoProto) -> str:
    return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name \
        if vi.type.tensor_type.elem_type != TensorProto.UNDEFINED else "float32"
