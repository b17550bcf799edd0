"""Pass 5 — report (or, with --strict, refuse) quantized ops left in float.

Expects: the output of pass 4.

Guarantees: the module is unchanged. `ctx.unconverted` lists, by ONNX node name, every op
that had quantized inputs but still computes in f32 — a `qcompile.fake_quantize` that was not
decomposed, a compute op that reads a dequantized value, or a quantize of a dequantized
value (a requantize done in f32, which fuse_requantize did not fuse) — each with the reason a pass
gave (`ctx.notes`) or, failing that, that no integer realization exists for the op. Nothing
falls back silently: with `ctx.strict` a non-empty list is a QuantizationError naming them.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .. import ops as qops
from ..errors import QuantizationError
from ._common import DQ, Q, _uses, dtype_of, op_name, owner

# ops that move or select data: a dequantized value passing through them is still "the
# quantized value", and they are not counted as compute
DATA_MOVEMENT = {"relax.reshape", "relax.flatten", "relax.permute_dims", "relax.expand_dims",
                 "relax.squeeze", "relax.strided_slice", "relax.split", "relax.concat",
                 "relax.nn.pad", "relax.astype"}


# ops the passes do realize on integers (when all their inputs are quantized)
_INT_OPS = {"relax.nn.conv2d", "relax.matmul", "relax.add", "relax.mean", "relax.nn.avg_pool2d",
            "relax.nn.max_pool2d", "relax.concat"}


def unconverted_ops(mod, ctx) -> list[dict]:
    func = mod["main"]
    uses = _uses(func)
    names = ctx.node_names
    from_dq: set = set()
    out = []
    notes = {}
    for n in ctx.notes:
        notes.setdefault(n["node"], n["reason"])
    for block in func.body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                continue
            v = b.value
            name = op_name(v)
            if isinstance(v, relax.TupleGetItem):
                if isinstance(v.tuple_value, relax.Var) and v.tuple_value in from_dq:
                    from_dq.add(b.var)
                continue
            if isinstance(v, relax.Tuple):
                if any(isinstance(f, relax.Var) and f in from_dq for f in v.fields):
                    from_dq.add(b.var)
                continue
            if name is None:
                continue
            args = list(v.args)
            if args and isinstance(args[0], relax.Tuple):
                args = list(args[0].fields) + args[1:]
            reads_dq = any(isinstance(a, relax.Var) and a in from_dq for a in args)
            if name == DQ:
                from_dq.add(b.var)
                continue
            if name in DATA_MOVEMENT:
                if reads_dq:
                    from_dq.add(b.var)
                continue
            if name == Q:
                if reads_dq:  # a dequantize -> quantize pair fuse_requantize did not fuse
                    node = owner(b.var, names, uses)
                    out.append({"node": node, "relax_op": "requantize (f32)",
                                "reason": notes.get(node, "dequantize -> quantize not fused "
                                                    "into an integer requantize")})
                continue
            node = owner(b.var, names, uses)
            if name == qops.FAKE_QUANTIZE:
                out.append({"node": node, "relax_op": name,
                            "reason": notes.get(node, "FakeQuantize kept in f32")})
                continue
            if reads_dq and (dtype_of(b.var) or "").startswith("float"):
                plain = [i for i, a in enumerate(args)
                         if isinstance(a, relax.Var) and a not in from_dq
                         and (dtype_of(a) or "").startswith("float")]
                if name in _INT_OPS and plain:
                    why = (f"input {plain[0]} is not quantized in the model (its producer has "
                           "no quantize / FakeQuantize)")
                else:
                    why = f"no integer realization for {name} (computed in f32 on dequantized " \
                          "inputs)"
                out.append({"node": node, "relax_op": name, "reason": notes.get(node, why)})
    return out


def strict_error(entries: list[dict]) -> QuantizationError:
    lines = [f"  {e['node']!r} ({e['relax_op']}): {e['reason']}" for e in entries[:20]]
    more = f"\n  ... and {len(entries) - 20} more" if len(entries) > 20 else ""
    return QuantizationError(
        f"--strict: {len(entries)} quantized op(s) cannot run in int8:\n"
        + "\n".join(lines) + more
        + "\nDrop --strict to build them in f32 (they are listed in model.json), or "
          "change the quantization of these nodes.")


def ReportFloatOps(ctx):
    """Records `ctx.unconverted`; the pipeline raises `strict_error` after the pass when
    `ctx.strict` (an exception raised inside a TVM pass reaches the caller as RuntimeError)."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.ReportFloatOps")
    def _pass(mod, _pc):
        ctx.unconverted = unconverted_ops(mod, ctx)
        return mod

    return _pass
