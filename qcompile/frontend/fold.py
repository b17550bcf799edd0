"""Constant folding on the ONNX graph, before import.

Expects: a ModelProto with static input shapes and inferred value shapes.
Guarantees: every node whose inputs are all constants (initializers, Constant nodes, or
`Shape` of a statically shaped tensor) is evaluated with ONNX's reference evaluator and
replaced by an initializer — so computed Reshape shapes (Shape->Gather->Concat->Reshape, as
in exported PP-OCR models) become constants the Relax importer accepts. Quantization ops
(QuantizeLinear, DequantizeLinear, FakeQuantize, QLinear*, *Integer) are never folded: the
low-precision passes need them, and folding a weight's DequantizeLinear would silently turn
an int8 weight back into fp32.
An `If` whose condition folds to a constant is replaced by the nodes of its taken branch
(`control_flow.inline_if`: outputs renamed to the If's, initializers hoisted, clashing names
made unique), which are folded in the same pass; nested Ifs follow. Tensors that the bodies
of the control-flow nodes left in the graph read from the outer scope stay available.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from .control_flow import Names, implicit_inputs, inline_if
from .shapes import infer_shapes

# fold / re-infer rounds before giving up on reaching a fixed point
MAX_FOLD_ROUNDS = 16

NEVER_FOLD = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FakeQuantize",
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
    "ConvInteger", "MatMulInteger", "QGemm",
    # non-deterministic / side-effecting
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan",
}
# Do not materialize folded tensors larger than this (elements): they stay computed.
MAX_FOLDED_ELEMENTS = 1 << 26


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = dims
    return shapes


def _eval_node(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: list) -> list:
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(helper.make_model(
        helper.make_graph([node], "fold",
                          [helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
                           for i in node.input if i],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                           for o in node.output]),
        opset_imports=opset))
    return ev.run(None, {i: values[i] for i in node.input if i})


def fold_constants(model: onnx.ModelProto, inlined: list | None = None
                   ) -> tuple[onnx.ModelProto, int]:
    """Return (folded model, number of nodes folded or If nodes inlined). `inlined`, when
    given, receives {node, branch, condition} for each If replaced by its taken branch."""
    graph = model.graph
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = _static_shapes(model)
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    used_by_graph_output = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    folded = 0
    names: Names | None = None
    queue = deque(graph.node)
    while queue:
        node = queue.popleft()
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.input \
                and node.input[0] in values:
            names = names or Names(graph)
            done = inline_if(node, values[node.input[0]], names)
            if done is not None:   # the taken branch's nodes are folded next
                for t in done.initializers:
                    values[t.name] = numpy_helper.to_array(t)
                queue.extendleft(reversed(done.nodes))
                folded += 1
                if inlined is not None:
                    inlined.append({"node": node.name or node.output[0], "branch": done.branch,
                                    "condition": node.input[0]})
                continue
        ok = node.domain in ("", "ai.onnx") and node.op_type not in NEVER_FOLD
        if ok and node.op_type == "Shape":
            src = node.input[0]
            if src in values:
                pass
            elif src in shapes:
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), None)
                shp = np.array(shapes[src], dtype=np.int64)[start:end]
                values[node.output[0]] = shp
                folded += 1
                continue
            else:
                ok = False
        elif ok:
            ok = all((not i) or (i in values) for i in node.input) and len(node.input) > 0 \
                or node.op_type == "Constant"
        if ok and not any(o in used_by_graph_output for o in node.output):
            try:
                outs = _eval_node(node, values, opset)
            except Exception:  # noqa: BLE001 - a node the reference evaluator cannot run stays
                outs = None    # computed (folding is an optimization)
            if outs is not None and all(np.asarray(o).size <= MAX_FOLDED_ELEMENTS for o in outs):
                for name, val in zip(node.output, outs):
                    values[name] = np.asarray(val)
                folded += 1
                continue
        keep.append(node)
    if not folded:
        return model, 0
    needed = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    for n in keep:     # outer-scope tensors read inside If/Loop/Scan bodies
        needed |= implicit_inputs(n)
    # (np.ascontiguousarray would turn a scalar into shape [1]: a Gather index then adds a dim)
    new_inits = [numpy_helper.from_array(np.array(v, order="C"), name)
                 for name, v in values.items() if name in needed]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    del out.graph.initializer[:]
    out.graph.initializer.extend(new_inits)
    init_names = {t.name for t in new_inits}
    # drop value_info of folded tensors; keep inputs that are real inputs
    vis = [vi for vi in out.graph.value_info if vi.name not in init_names]
    del out.graph.value_info[:]
    out.graph.value_info.extend(vis)
    return out, folded


def fold_to_fixpoint(model: onnx.ModelProto, source: str = "model", inlined: list | None = None,
                     shapes_optional: bool = False) -> tuple[onnx.ModelProto, int]:
    """Fold, re-infer shapes, repeat until nothing folds (at most `MAX_FOLD_ROUNDS`): a
    folded shape (Shape->...->Reshape) makes the Reshape's output static, which lets the next
    Shape of it fold in the next round (PP-OCRv4's attention), and a folded If condition
    inlines its branch. `model` must be shape-inferred already. `shapes_optional`: a failed
    re-inference keeps the model as it is instead of raising. Returns (model, nodes folded
    or Ifs inlined)."""
    folded = 0
    for _ in range(MAX_FOLD_ROUNDS):
        model, n = fold_constants(model, inlined=inlined)
        folded += n
        if not n:
            break
        try:
            model = infer_shapes(model, source)
        except ModelError:
            if not shapes_optional:
                raise
    return model, folded
