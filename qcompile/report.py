"""The per-op precision table written into model.json and printed by `qcompile inspect`.

One row per ONNX compute node: op type, node name, the dtypes its realization reads and
writes, its execution precision (int8 / f32), and for f32 rows the reason it was not
converted. The summary line reads like OpenVINO's:
"N of M compute ops in INT8; f32: [Softmax 'prob']".
"""
from __future__ import annotations

from collections import Counter

# ONNX op types that do arithmetic (data movement, Q/DQ/FQ and shape ops are not counted).
COMPUTE_OPS = {
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger",
    "QLinearMatMul", "Add", "Sub", "Mul", "Div", "QLinearAdd", "QLinearMul", "AveragePool",
    "GlobalAveragePool", "QLinearGlobalAveragePool", "QLinearAveragePool", "MaxPool",
    "GlobalMaxPool", "Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization",
    "InstanceNormalization", "Erf", "Gelu", "Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Exp", "Log", "Sqrt", "Pow", "ReduceMean", "ReduceSum",
    "ReduceMax", "Resize", "Einsum",
}
INT_DTYPES = {"uint8", "int8"}


def _call_dtypes(call):
    from tvm import relax

    ins = []
    for a in call.args:
        ty = getattr(a, "ty", None)
        if isinstance(ty, relax.TensorType):
            ins.append(str(ty.dtype))
    ty = getattr(call, "ty", None)
    out = str(ty.dtype) if isinstance(ty, relax.TensorType) else None
    return ins, out


def realized_ops(mod) -> dict[str, dict]:
    """Var name -> {op, inputs dtypes, output dtype} for each call binding in `main`."""
    from tvm import relax

    out = {}
    func = mod["main"]
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call):
                op = b.value.op
                name = getattr(op, "name", None) or getattr(op, "name_hint", str(op))
                ins, o = _call_dtypes(b.value)
                out[b.var.name] = {"relax_op": str(name), "in_dtypes": ins, "out_dtype": o}
    return out


def classify(row: dict) -> str:
    ins = set(row.get("in_dtypes") or [])
    return "int8" if ins & INT_DTYPES else "f32"


def precision_table(mod, imported, ctx) -> dict:
    """Rows for every ONNX compute node, from the module after the low-precision passes."""
    realized = realized_ops(mod)
    by_node = {imported.node_names.get(v, v): r for v, r in realized.items()}
    reasons = {n["node"]: n["reason"] for n in getattr(ctx, "notes", [])}
    rows = []
    for node, op_type in imported.node_op_types.items():
        if op_type not in COMPUTE_OPS:
            continue
        r = by_node.get(node)
        prec = classify(r) if r else "fused"
        row = {"node": node, "op": op_type, "precision": prec,
               "relax_op": r["relax_op"] if r else None,
               "in_dtypes": r["in_dtypes"] if r else None,
               "out_dtype": r["out_dtype"] if r else None}
        if prec == "f32":
            row["reason"] = reasons.get(node, "no quantization parameters on its inputs")
        rows.append(row)
    return {"ops": rows, "summary": summary_line(rows)}


def summary_line(rows: list[dict]) -> str:
    counted = [r for r in rows if r["precision"] in ("int8", "f32")]
    n8 = sum(1 for r in counted if r["precision"] == "int8")
    f32 = [r for r in counted if r["precision"] == "f32"]
    if len(f32) <= 6:
        shown = ", ".join(f"{r['op']} {r['node']!r}" for r in f32)
    else:
        kinds = Counter(r["op"] for r in f32)
        shown = ", ".join(f"{k} x{v}" for k, v in kinds.most_common())
    return f"{n8} of {len(counted)} compute ops in INT8; f32: [{shown}]"


def format_table(meta: dict) -> str:
    rows = meta.get("ops") or []
    lines = [f"{'node':40s} {'op':20s} {'precision':9s} {'in':18s} {'out':8s} reason"]
    for r in rows:
        ins = ",".join(r.get("in_dtypes") or []) if r.get("in_dtypes") else "-"
        lines.append(f"{r['node'][:40]:40s} {r['op'][:20]:20s} {r['precision']:9s} "
                     f"{ins[:18]:18s} {str(r.get('out_dtype') or '-'):8s} {r.get('reason', '')}")
    lines.append(meta.get("precision_summary", summary_line(rows)))
    return "\n".join(lines)
