"""Read an ONNX file (or take a ModelProto) and validate it, with errors that name the file.

Weights in ONNX external data are read from the files next to the .onnx file (a missing
one is a ModelError naming both); a model with external data, or too large to serialize
(over 2 GB, see large_model.py), is validated from its path."""
from __future__ import annotations

import os

import onnx

from ..errors import ModelError
from . import large_model


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Return (ModelProto, a display name for messages). Raises ModelError naming the file."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<in-memory model>"
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelError(f"model file {path!r} does not exist; check the path")
    if os.path.isdir(path):
        raise ModelError(f"model path {path!r} is a directory; pass the .onnx file inside it")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelError(
            f"{path!r} is not a readable ONNX model ({type(err).__name__}: {err}); "
            "re-export it or check that the file is complete") from err
    external = large_model.load_external_data(proto, path, repr(path))
    if not proto.graph.node:
        raise ModelError(f"{path!r} parsed but holds no graph nodes: is it an ONNX model?")
    if proto.ir_version < 3:
        raise ModelError(f"{path!r} has ONNX IR version {proto.ir_version}; qcompile needs >= 3 "
                         "(re-export with a current exporter)")
    try:
        # the checker serializes an in-memory model: above 2 GB only the path works (the
        # file itself is small, the weights are in the external data it names)
        onnx.checker.check_model(path if external or large_model.needs_external(proto)
                                 else proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(f"{path!r} fails ONNX validation: {first}") from err
    except UnicodeDecodeError as err:   # a name/attribute string that is not UTF-8
        raise ModelError(f"{path!r} holds a string that is not valid UTF-8 ({err.reason} at "
                         f"byte {err.start} of {err.object[:40]!r}): the file is corrupt; "
                         "re-export it or check that it was copied in binary mode") from err
    check_tensors(proto, repr(path))
    return proto, path


def check_tensors(proto: onnx.ModelProto, where: str) -> None:
    """What the checker lets through: initializers whose element type is unknown or whose
    data does not fill their shape, graph inputs/outputs of an unknown element type."""
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        try:
            numpy_helper.to_array(t)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{where}: initializer {t.name!r} cannot be read (element type "
                             f"{t.data_type}, dims {list(t.dims)}: {err}); the file is corrupt "
                             "or was written by a broken exporter; re-export it") from err
    for kind, vis in (("input", proto.graph.input), ("output", proto.graph.output)):
        for vi in vis:
            if not vi.type.HasField("tensor_type"):
                continue
            et = vi.type.tensor_type.elem_type
            try:
                if et:
                    onnx.helper.tensor_dtype_to_np_dtype(et)
            except (KeyError, ValueError) as err:
                raise ModelError(f"{where}: graph {kind} {vi.name!r} has element type {et}, "
                                 "which is not an ONNX tensor type; re-export the model") from err


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1
