"""ONNX models above protobuf's 2 GB limit: weights in ONNX external data.

A `ModelProto` in memory may hold more than 2 GB (`CopyFrom` works), but it cannot become
bytes: `SerializeToString()` and `ByteSize()` raise protobuf's `EncodeError`, and so do
`onnx.checker.check_model(proto)`, `onnx.shape_inference.infer_shapes(proto)`, the version
converter and `onnxruntime.InferenceSession(proto.SerializeToString())`, which all go through
bytes. This module is the one place qcompile deals with that; everything else calls it:

* `needs_external(model)`: the serialized size, estimated from the tensor sizes (no
  serialization), is above `PROTOBUF_LIMIT`. Tests monkeypatch `PROTOBUF_LIMIT` to a few
  hundred KB to run the large-model paths on small models.
* `load(path)`: `onnx.load` with its external data, with a `ModelError` naming the .onnx
  file and the missing or short data file.
* `strip(model)`: a copy whose tensors of `EXTERNAL_MIN_BYTES` or more keep their name, type
  and dims but no data (marked as external data at `STRIPPED`): small enough to serialize,
  for shape inference (`data_prop` sees the small tensors, which are the shape constants,
  exactly as `infer_shapes_path` would on a file saved with external data) and the version
  converter; `restore()` puts the data back.
* `infer_shapes(model, ...)`: `onnx.shape_inference.infer_shapes` at any size.
* `save(model, path)`: writes `path`, and above the limit `path.data` next to it (ONNX
  external data, large offsets 4 KiB aligned), without modifying `model`.
* `ort_session(model, ...)`: an ONNX Runtime session; above the limit the model is saved to
  a temporary directory (kept with the session) and the session opened from the path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from ..errors import ModelError

# protobuf refuses to serialize (or parse) a message of 2 GiB or more
PROTOBUF_LIMIT = 2**31 - 1
# tensors this large (bytes) go to external data / are stripped; onnx.save's default threshold
EXTERNAL_MIN_BYTES = 1024
# where a stripped tensor's data "lives": nowhere, the data stays in the full model
STRIPPED = "qcompile-stripped-tensor-data"
# offsets of tensors this large are aligned in the data file (ONNX Runtime can map them)
ALIGN, ALIGN_MIN_BYTES = 4096, 1 << 20

_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                "double_data", "uint64_data", "external_data", "data_location")
# element types whose typed-field values numpy_helper turns into the raw (external) layout
_PACKED = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(TensorProto, n)}
_MODEL_OVERHEAD, _NODE_OVERHEAD = 1 << 20, 256


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 8


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes the tensor's data takes in memory (0 for data still in an external file),
    from dims and element type: reading `raw_data` would copy it."""
    if t.data_location == TensorProto.EXTERNAL:
        return 0
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)


def _tensors(graph: onnx.GraphProto):
    """Every tensor of `graph` and its subgraphs: initializers and attribute values."""
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _tensors(sub)


def estimated_size(model: ModelProto) -> int:
    """Serialized size of `model`, estimated from its tensors (without serializing it)."""
    g = model.graph
    return (sum(tensor_nbytes(t) + len(t.name) + 16 for t in _tensors(g))
            + _NODE_OVERHEAD * (len(g.node) + len(g.value_info)) + _MODEL_OVERHEAD)


def needs_external(model: ModelProto) -> bool:
    """True when `model` is too large to serialize in one piece (1/64 headroom for the
    estimate)."""
    return estimated_size(model) > PROTOBUF_LIMIT - PROTOBUF_LIMIT // 64


def has_external_data(model: ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in _tensors(model.graph))


# ---- loading

def load(path: str | os.PathLike, source: str | None = None) -> ModelProto:
    """`onnx.load(path)` with its external data. A missing, unreadable or short data file
    is a `ModelError` naming the .onnx file and the data file; a file that is not ONNX
    raises what `onnx.load` raises (the caller words it)."""
    path = os.fspath(path)
    proto = onnx.load(path, load_external_data=False)
    load_external_data(proto, path, source)
    return proto


def load_external_data(proto: ModelProto, path: str, source: str | None = None) -> bool:
    """Read the external data of `proto` (loaded from `path`) into it. Returns whether
    there was any."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

    where = source or repr(path)
    base = os.path.dirname(os.path.abspath(path))
    found = False
    for t in _tensors(proto.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        found = True
        try:
            info = ExternalDataInfo(t)
        except ValueError as err:
            raise ModelError(f"{where}: tensor {t.name!r} has a broken external data reference "
                             f"({err}); re-export the model") from err
        data = os.path.join(base, info.location) if info.location else ""
        if not info.location or not os.path.isfile(data):
            raise ModelError(
                f"{where} keeps the data of tensor {t.name!r} in the external data file "
                f"{info.location!r}, which does not exist in {base!r}. Copy that file next to "
                f"{os.path.basename(path)!r} (external data paths are relative to the .onnx "
                "file), or re-export the model with its weights inside")
        try:
            load_external_data_for_tensor(t, base)
        except Exception as err:  # noqa: BLE001 - OSError, ValueError, the C++ checker's
            raise ModelError(
                f"{where}: reading tensor {t.name!r} from its external data file {data!r} "
                f"failed ({type(err).__name__}: {err}); the data file is truncated, from "
                "another export or outside the model's folder; copy the .onnx file and its "
                "data file together again, or re-export the model") from err
    return found


# ---- stripping large tensors

def _repeated(fd) -> bool:
    r = getattr(fd, "is_repeated", None)       # protobuf >= 5; `label` before
    return bool(r) if r is not None else fd.label == fd.LABEL_REPEATED


def _copy_fields(src, dst, skip=()) -> None:
    """Copy the fields of `src` into `dst` but `skip` (never read: ListFields() would copy
    a tensor's raw_data into a bytes object)."""
    for fd in src.DESCRIPTOR.fields:
        name = fd.name
        if name in skip:
            continue
        if _repeated(fd):
            if len(getattr(src, name)):
                getattr(dst, name).extend(getattr(src, name))   # (messages are copied)
        elif src.HasField(name):
            if fd.message_type is not None:
                getattr(dst, name).CopyFrom(getattr(src, name))
            else:
                setattr(dst, name, getattr(src, name))


def _strippable(t: TensorProto, min_bytes: int) -> bool:
    if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
        return False
    if t.data_type in _PACKED and not t.HasField("raw_data"):
        return False
    return tensor_nbytes(t) >= min_bytes


def _raw_bytes(t: TensorProto) -> bytes:
    """The tensor's data in the raw (external data) layout."""
    if t.HasField("raw_data"):
        return t.raw_data
    from onnx import numpy_helper

    return np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()  # little-endian hosts


def _reference(t: TensorProto, location: str, offset: int, length: int) -> TensorProto:
    s = TensorProto()
    _copy_fields(t, s, skip=_DATA_FIELDS)
    s.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = s.external_data.add()
        e.key, e.value = k, v
    return s


Sink = Callable[[TensorProto], tuple[str, int, int]]


def _strip(model: ModelProto, sink: Sink, min_bytes: int) -> ModelProto:
    """A copy of `model` whose large tensors (top-level initializers and Constant values)
    are references; `sink(tensor)` stores a tensor's data and returns (location, offset,
    length). Subgraphs are copied as they are."""
    out = ModelProto()
    _copy_fields(model, out, skip=("graph",))
    g, og = model.graph, out.graph
    _copy_fields(g, og, skip=("initializer", "node"))
    for t in g.initializer:
        if _strippable(t, min_bytes):
            og.initializer.append(_reference(t, *sink(t)))
        else:
            og.initializer.append(t)
    def big(a: onnx.AttributeProto) -> bool:
        return a.type == onnx.AttributeProto.TENSOR and _strippable(a.t, min_bytes)

    for n in g.node:
        if not any(big(a) for a in n.attribute):
            og.node.append(n)
            continue
        c = og.node.add()
        _copy_fields(n, c, skip=("attribute",))
        for a in n.attribute:
            ca = c.attribute.add()
            if big(a):
                _copy_fields(a, ca, skip=("t",))
                ca.t.CopyFrom(_reference(a.t, *sink(a.t)))
            else:
                ca.CopyFrom(a)
    return out


def strip(model: ModelProto, min_bytes: int = EXTERNAL_MIN_BYTES) -> ModelProto:
    """A copy of `model` without the data of its tensors of `min_bytes` or more (name,
    type and dims kept; marked as external data at `STRIPPED`). Small enough to serialize;
    ONNX Runtime cannot run it."""
    return _strip(model, lambda t: (STRIPPED, 0, tensor_nbytes(t)), min_bytes)


def strip_if_large(model: ModelProto) -> ModelProto:
    return strip(model) if needs_external(model) else model


def restore(stripped: ModelProto, full: ModelProto) -> ModelProto:
    """Put the data of `full`'s tensors back into `stripped` (in place; by tensor name:
    top-level initializers and Constant values), e.g. after the version converter."""
    data = {t.name: t for t in full.graph.initializer}
    consts = {n.output[0]: a.t for n in full.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}

    def is_stripped(t):
        return t.data_location == TensorProto.EXTERNAL and any(
            e.key == "location" and e.value == STRIPPED for e in t.external_data)

    for t in stripped.graph.initializer:
        if is_stripped(t):
            t.CopyFrom(data[t.name])
    for n in stripped.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and is_stripped(a.t):
                a.t.CopyFrom(consts[n.output[0]])
    return stripped


# ---- shape inference

def infer_shapes(model: ModelProto, *, stand_in: Callable[[ModelProto], None] | None = None,
                 inplace: bool = False, **options) -> ModelProto:
    """`onnx.shape_inference.infer_shapes(model, **options)` at any size. Above the limit,
    inference runs on `strip(model)` and its value_info and outputs (and nodes holding
    subgraphs) are copied onto a copy of `model`, or with `inplace` onto `model` itself (no
    second copy of the weights; the caller owns `model`). `stand_in(m)`, if given, edits
    (in place) the copy inference runs on; the result keeps `model`'s nodes."""
    large = needs_external(model)
    if not large and stand_in is None:
        return onnx.shape_inference.infer_shapes(model, **options)
    work = strip(model) if large else copy(model)
    if stand_in is not None:
        stand_in(work)
    inferred = onnx.shape_inference.infer_shapes(work, **options)
    out = model if inplace and large else copy(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    del out.graph.output[:]
    out.graph.output.extend(inferred.graph.output)
    if stand_in is None:  # subgraphs carry their own value_info
        for i, n in enumerate(inferred.graph.node):
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in n.attribute):
                out.graph.node[i].CopyFrom(n)
    return out


def copy(model: ModelProto) -> ModelProto:
    """A deep copy (CopyFrom works above 2 GB; FromString(SerializeToString()) does not)."""
    m = ModelProto()
    m.CopyFrom(model)
    return m


# ---- saving

def data_file_for(path: str | os.PathLike) -> Path:
    """The external data file `save` writes next to `path`: `<name>.data`."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save(model: ModelProto, path: str | os.PathLike, external: bool | None = None,
         edit: Callable[[ModelProto], ModelProto] | None = None) -> Path | None:
    """Write `model` to `path`. With `external` (default: `needs_external(model)`) its
    tensors of `EXTERNAL_MIN_BYTES` or more go to `data_file_for(path)`, in the same folder,
    referenced by file name. `model` is not modified; `edit(m)` returns the model to write
    instead of `m` (whose large tensors are already stripped when `external`; `edit` must
    not modify `m`). Returns the data file, or None."""
    path = Path(path)
    if external is None:
        external = needs_external(model)
    if not external:
        onnx.save(edit(model) if edit is not None else model, str(path))
        return None
    data = data_file_for(path)
    with open(data, "wb") as f:
        def sink(t: TensorProto) -> tuple[str, int, int]:
            b = _raw_bytes(t)
            pos = f.tell()
            if len(b) >= ALIGN_MIN_BYTES and pos % ALIGN:
                f.write(b"\0" * (ALIGN - pos % ALIGN))
                pos = f.tell()
            f.write(b)
            return data.name, pos, len(b)

        skeleton = _strip(model, sink, EXTERNAL_MIN_BYTES)
    if edit is not None:
        skeleton = edit(skeleton)
    with open(path, "wb") as f:
        f.write(skeleton.SerializeToString())
    return data


# ---- ONNX Runtime

def ort_session(model: ModelProto, options=None, providers=("CPUExecutionProvider",),
                edit: Callable[[ModelProto], ModelProto] | None = None):
    """(InferenceSession, temporary directory or None) for `edit(model)` (or `model`;
    `edit` as in `save`). Above the limit the model is saved with external data to a
    temporary directory and the session opened from the file; keep the directory object as
    long as the session (the directory is deleted when it is collected)."""
    import onnxruntime as ort

    if not needs_external(model):
        m = edit(model) if edit is not None else model
        return ort.InferenceSession(m.SerializeToString(), options,
                                    providers=list(providers)), None
    tmp = tempfile.TemporaryDirectory(prefix="qcompile-ort-")
    path = Path(tmp.name) / "model.onnx"
    save(model, path, external=True, edit=edit)
    return ort.InferenceSession(str(path), options, providers=list(providers)), tmp


__all__ = ["PROTOBUF_LIMIT", "EXTERNAL_MIN_BYTES", "needs_external", "estimated_size",
           "has_external_data", "load", "load_external_data", "strip", "strip_if_large",
           "restore", "infer_shapes", "copy", "save", "data_file_for", "ort_session"]
