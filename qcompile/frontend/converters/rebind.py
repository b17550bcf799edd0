"""Provenance for TVM's own converters that bind their result themselves.

The registry names a node's result after the node only when the converter returns a Call;
several of TVM's converters (LayerNormalization, ...) emit the call and return its Var, which
then keeps an anonymous name (`lv6`). This wraps every TVM converter that qcompile does not
replace: when the result is a Var bound, during this conversion, to a Call, the Call itself is
returned, so the registry binds it under the node's name (the first binding becomes dead
code, removed by the passes' dead-code elimination); a single-output node converted to a
tuple of placeholders (LayerNormalization) returns its first field.
"""
from __future__ import annotations

from ...fallbacks import tvm_errors
from ..registry import _REGISTRY, _original_convert_map, register_converter

# control flow / tuple-producing ops are left as TVM converts them
_SKIP = {"If", "Loop", "Scan", "Split", "Constant", "Identity", "Dropout", "Optional",
         "OptionalHasElement", "OptionalGetElement", "SequenceConstruct", "SplitToSequence"}


class _Rebind:
    def __init__(self, op_type: str):
        self.op_type = op_type

    def get_converter(self, opset):
        inner = _original_convert_map()[self.op_type].get_converter(opset)

        def convert(bb, inputs, attrs, params):
            from tvm import relax

            out = inner(bb, inputs, attrs, params)
            n_out = (attrs.get("tvm_custom") or {}).get("num_outputs", 1)
            if isinstance(out, relax.Tuple) and n_out == 1 and out.fields and \
                    isinstance(out.fields[0], relax.Call):
                return out.fields[0]      # LayerNormalization: (y, unused, unused)
            if isinstance(out, relax.Var) and not any(
                    i is not None and isinstance(i, relax.Expr) and out.same_as(i)
                    for i in inputs):
                try:
                    val = bb.lookup_binding(out)
                except tvm_errors():
                    val = None
                if isinstance(val, relax.Call):
                    return val
            return out

        return convert


def register_all() -> None:
    for op_type in list(_original_convert_map()):
        if op_type in _SKIP or op_type in _REGISTRY:
            continue
        register_converter(op_type)(_Rebind(op_type))
