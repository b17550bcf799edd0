"""The per-op precision table written into model.json and printed by `qcompile inspect`.

One row per ONNX compute node (after the low-precision passes, before kernel dispatch):

  node, op        the ONNX node name and op type
  precision       "int8" (its realization reads only integer tensors), "f32", or "fused"
                  (no binding of its own is left: a ReLU/Clip folded into a requantize's
                  clip, a Mul folded into a scale, ...)
  in, out         the dtypes the realization reads and writes (u8 / s8 / s32 / f32)
  converted       True for int8 rows
  reason          for f32 rows, why the op was not converted (from the passes' reports), or
                  that its inputs are not quantized in the model at all
  relax_op        the Relax op realizing it

The summary line reads like OpenVINO's: "N of M compute ops in INT8; f32: [Softmax 'prob']"
(fused rows are not counted).
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
SHORT = {"uint8": "u8", "int8": "s8", "int32": "s32", "float32": "f32", "int16": "s16",
         "uint16": "u16", "int64": "s64", "float16": "f16", "bool": "bool"}
# ops that only finish a realization (bias / zero-point add, cast): the row shows the op
# that computes the node, found through them
# (a 1-D conv is a 2-D one, squeezed; a ConvTranspose with stride == kernel a conv and a
# depth-to-space: reshape, permute_dims, reshape)
_SHAPE_EPILOGUE = {"relax.squeeze", "relax.expand_dims", "relax.permute_dims"}
_EPILOGUE = {"relax.add", "relax.subtract", "relax.astype", "relax.multiply",
             "relax.reshape", "relax.clip", "relax.maximum", "relax.minimum"} | _SHAPE_EPILOGUE
_REQUANT = {"relax.dequantize", "qcompile.requantize"}
_FUSED_WHY = {"Relu": "folded into the clip bounds of the requantize after it",
              "Clip": "folded into the clip bounds of the requantize after it",
              "Mul": "a constant scale folded into the (de)quantization scale",
              "Div": "a constant scale folded into the (de)quantization scale",
              "Add": "folded into the s32 bias of the op before it"}


def _short(dtype) -> str:
    return SHORT.get(str(dtype), str(dtype))


def _bindings(mod):
    from tvm import relax

    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                out.append(b)
    return out


def _tensor_dtype(expr):
    from tvm import relax

    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def _core(binding, values, named):
    """The call computing a node: the binding's own call, or (through bias adds, casts and
    aliases) the call of an anonymous binding it finishes."""
    import tvm
    from tvm import relax

    v = binding.value
    squeezed = False
    for _ in range(8):
        if isinstance(v, relax.Var) and v in values:
            v = values[v]
            continue
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)):
            return v
        squeezed = squeezed or v.op.name in _SHAPE_EPILOGUE
        # a 1-D conv's squeeze of the dequantized 2-D result: the node is the conv under it
        if v.op.name not in _EPILOGUE and not (squeezed and v.op.name in _REQUANT):
            return v
        nxt = None
        for a in v.args:
            if isinstance(a, relax.Var) and a in values and a.name not in named:
                cand = values[a]
                if isinstance(cand, relax.Call):
                    nxt = cand
                    break
        if nxt is None:
            return v
        v = nxt
    return v


def precision_table(mod, imported, ctx) -> dict:
    """Rows for every ONNX compute node, from the module after the low-precision passes."""
    import tvm
    from tvm import relax

    from .frontend.registry import sanitize

    bindings = _bindings(mod)
    values = {b.var: b.value for b in bindings}
    named = set(imported.node_names)          # sanitized var names that are ONNX nodes
    by_name: dict[str, list] = {}
    for b in bindings:
        by_name.setdefault(b.var.name, []).append(b)
    notes: dict[str, str] = {}
    for n in getattr(ctx, "notes", []) or []:
        notes.setdefault(n["node"], n["reason"])
    unconverted = {e["node"]: e["reason"] for e in getattr(ctx, "unconverted", []) or []}
    rows = []
    for node, op_type in imported.node_op_types.items():
        if op_type not in COMPUTE_OPS:
            continue
        cands = by_name.get(sanitize(node), [])
        row = {"node": node, "op": op_type}
        if not cands:
            row.update(precision="fused", converted=None, relax_op=None, in_dtypes=None,
                       out_dtype=None, reason=_FUSED_WHY.get(op_type, "fused into another op"))
            rows.append(row)
            continue
        best = None
        for b in cands:
            core = _core(b, values, named)
            ins = [_tensor_dtype(a) for a in (core.args if isinstance(core, relax.Call) else [])]
            if isinstance(core, relax.Call) and core.args and isinstance(core.args[0], relax.Tuple):
                ins = [_tensor_dtype(f) for f in core.args[0].fields]
            ins = [d for d in ins if d]
            is_int = bool(ins) and all("int" in d for d in ins)
            cand = (is_int, b, core, ins)
            if best is None or (is_int and not best[0]):
                best = cand
        is_int, b, core, ins = best
        if isinstance(core, relax.Call) and isinstance(core.op, tvm.ir.Op) and \
                core.op.name == "relax.dequantize" and op_type in ("Mul", "Div"):
            # x * c / x / c with a positive scalar constant: absorbed into the scale of the
            # dequantize now bound under the node's name
            row.update(precision="fused", converted=None, relax_op=core.op.name,
                       in_dtypes=None, out_dtype=None, reason=_FUSED_WHY[op_type])
            rows.append(row)
            continue
        op = core.op.name if isinstance(core, relax.Call) and isinstance(core.op, tvm.ir.Op) \
            else type(core).__name__
        row.update(precision="int8" if is_int else "f32", converted=is_int, relax_op=op,
                   in_dtypes=[_short(d) for d in ins], out_dtype=_short(_tensor_dtype(b.var)))
        if not is_int:
            row["reason"] = (unconverted.get(node) or notes.get(node)
                             or "not quantized in the model (no quantize / FakeQuantize on "
                                "its inputs)")
        rows.append(row)
    # compute nodes inside If/Loop/Scan bodies: run as imported, in f32 (neither the PTQ nor
    # the low-precision passes look inside control flow), each with its owner in the reason
    for e in getattr(imported, "control_flow", None) or []:
        if e["op"] in COMPUTE_OPS:
            rows.append({"node": e["node"], "op": e["op"], "precision": "f32",
                         "converted": False, "relax_op": None, "in_dtypes": None,
                         "out_dtype": None, "reason": e["reason"]})
    return {"ops": rows, "summary": summary_line(rows),
            "unconverted": list(getattr(ctx, "unconverted", []) or [])}


def int8_kernels_line(int8_kernels: dict | None) -> str | None:
    """"int8 kernels by dot-product variant: ..." for model.json `int8_kernels` (the build's
    log and `qcompile inspect`), with how many are Winograd convs; None without kernels.
    fast = the saturating vpmaddubsw pair, chosen only where proven exact."""
    by_variant = (int8_kernels or {}).get("by_variant") or {}
    if not by_variant:
        return None
    wino = ((int8_kernels or {}).get("by_kernel") or {}).get("conv2d_winograd_nchwc", 0)
    return ("int8 kernels by dot-product variant: "
            + ", ".join(f"{k} {v}" for k, v in sorted(by_variant.items()))
            + (f" ({wino} of them 3x3 convs as exact Winograd F(2x2, 3x3))" if wino else ""))


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


def render_table(columns: list[tuple[str, str]], rows: list[list[str]]) -> str:
    """A plain-text table drawn by `rich`: `columns` are (header, "left" | "right") pairs,
    `rows` their cells as strings (taken literally: no rich markup). One ASCII rule under the
    header (rich's SIMPLE box drawn with "-": the text prints on any stream encoding), two
    spaces between columns, no colors, no cell wrapping (the console is wide, so piped output
    and logs keep one row a line), no trailing spaces. Returns the table without a final
    newline, for `print` or for callers that add lines below it."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    simple_ascii = box.Box("    \n    \n -- \n    \n    \n -- \n    \n    \n", ascii=True)
    table = Table(box=simple_ascii, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, highlight=False, markup=False,
            emoji=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def format_table(meta: dict) -> str:
    """The per-op table (`qcompile inspect`) followed by the summary line."""
    rows = meta.get("ops") or []
    width = min(max([len(r["node"]) for r in rows] + [4]), 48)
    cells = []
    for r in rows:
        ins = ",".join(r.get("in_dtypes") or []) or "-"
        cells.append([r["node"][:width], r["op"][:22], r["precision"], ins[:12],
                      str(r.get("out_dtype") or "-"),
                      r.get("reason", "") if r["precision"] != "int8" else ""])
    table = render_table([("node", "left"), ("op", "left"), ("precision", "left"),
                          ("in", "left"), ("out", "left"), ("reason", "left")], cells)
    return table + "\n" + meta.get("precision_summary", summary_line(rows))
