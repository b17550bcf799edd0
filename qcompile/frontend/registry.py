"""The converter registry: qcompile's own ONNX op converters on top of TVM's Relax importer.

TVM's importer has no converter hook; its lookup `_get_convert_map()` (keyed by op_type, the
domain ignored) is wrapped while qcompile imports a model (`patched_importer()`), adding:
- the converters registered here with `@register_converter("FakeQuantize", ...)`;
- provenance: every node's conversion result is bound to a Relax var named after the ONNX
  node, so passes and reports can speak in the model's node names.

A converter is a class in TVM's `OnnxOpConverter` style: `get_converter(opset)` returns
`fn(bb, inputs, attrs, params) -> relax.Expr`, where `attrs["tvm_custom"]["name"]` is the node
name. Later modules (quantized ops, ...) register theirs by importing this module.
"""
from __future__ import annotations

import contextlib
import re
import threading
from typing import Callable

_REGISTRY: dict[str, type] = {}
_LOCK = threading.Lock()


def register_converter(*op_types: str) -> Callable[[type], type]:
    """Class decorator: `cls.get_converter(opset)` converts these ONNX op types."""

    def deco(cls: type) -> type:
        for t in op_types:
            _REGISTRY[t] = cls
        return cls

    return deco


def override_converter(op_type: str):
    """Decorator for `fn(bb, inputs, attr, opset, tvm)`: qcompile's converter of an op TVM
    also converts. `tvm(inputs, attr)` runs TVM's converter (for the node's opset) on
    inputs/attributes `fn` may have rewritten; `fn` returns the result, or None to leave the
    node to TVM's converter unchanged."""

    def deco(fn):
        class Override:
            @classmethod
            def get_converter(cls, opset):
                tvm_impl = _original_convert_map()[op_type].get_converter(opset)

                def convert(bb, inputs, attr, params):
                    def tvm(ins, at):
                        return tvm_impl(bb, ins, at, params)

                    out = fn(bb, inputs, attr, opset, tvm)
                    return tvm(inputs, attr) if out is None else out

                return convert

        Override.__name__ = Override.__qualname__ = f"{fn.__name__}_override"
        register_converter(op_type)(Override)
        return fn

    return deco


def registered_op_types() -> set[str]:
    _load_builtin_converters()
    return set(_REGISTRY)


def _load_builtin_converters() -> None:
    # Importing the package registers qcompile's converters (FakeQuantize, QLinear*, ...).
    from . import converters  # noqa: F401


def tvm_supported_op_types() -> set[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(_original_convert_map()) | {"If", "Constant"}


_ORIGINAL = None


def _original_convert_map() -> dict:
    global _ORIGINAL
    from tvm.relax.frontend.onnx import onnx_frontend

    if _ORIGINAL is None:
        _ORIGINAL = onnx_frontend._get_convert_map
    return _ORIGINAL()


def sanitize(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return s if s and (s[0].isalpha() or s[0] == "_") else "n_" + s


class _Named:
    """Wraps a converter class so the node's result is emitted under the node's name."""

    def __init__(self, inner: type):
        self.inner = inner

    def get_converter(self, opset: int):
        fn = self.inner.get_converter(opset)

        def convert(bb, inputs, attrs, params):
            from tvm import relax

            out = fn(bb, inputs, attrs, params)
            name = (attrs.get("tvm_custom") or {}).get("name")
            if name and isinstance(out, relax.Call):
                out = bb.emit(bb.normalize(out), name_hint=sanitize(name))
            return out

        return convert

    def __getattr__(self, item):
        return getattr(self.inner, item)


@contextlib.contextmanager
def patched_importer():
    """While active, TVM's ONNX importer sees qcompile's converters and names results."""
    from tvm.relax.frontend.onnx import onnx_frontend

    _load_builtin_converters()
    original = onnx_frontend._get_convert_map
    base = _original_convert_map()
    merged = {k: _Named(v) for k, v in base.items()}
    merged.update({k: _Named(v) for k, v in _REGISTRY.items()})
    with _LOCK:
        onnx_frontend._get_convert_map = lambda: merged
        try:
            yield
        finally:
            onnx_frontend._get_convert_map = original
