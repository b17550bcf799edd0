"""Where FakeQuantize goes: the quantization plan, from the target's rules and the graph.

One quantizer per quantized tensor (consumers that need it quantized share it; consumers that
do not keep reading the fp32 tensor). Activation quantizers are per tensor; weight quantizers
are per output channel on the axis `opinfo.LINEAR_OPS` names. Ops whose rule asks for
`unified_scales` put all their activation quantizers in one group (one range). Every node that
is not quantized is recorded with the reason, so the report lists all of them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .graph import Graph
from .opinfo import (DATA_INPUTS, LINEAR_OPS, PRECISION_PRESERVING, PRESERVES_SIGN,
                     nonnegative_output)
from .rules import Preset, QuantRules


@dataclasses.dataclass
class Quantizer:
    qid: str
    tensor: str
    kind: str                          # "activation" | "weight"
    levels: int
    mode: str                          # "symmetric" | "asymmetric"
    axis: int | None = None            # per-channel axis (weights)
    consumers: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    group: str | None = None           # unified-scale group id
    nonnegative: bool = False          # proven >= 0 by the graph (ReLU-like producer)
    constant: bool = False             # quantizes an initializer
    # filled by calibration
    unsigned: bool | None = None
    estimator: str = ""
    raw_range: tuple[float, float] | None = None
    input_low: np.ndarray | None = None
    input_high: np.ndarray | None = None


@dataclasses.dataclass
class QuantizedOp:
    name: str
    op_type: str
    inputs: dict[int, str]             # input index -> quantizer id


@dataclasses.dataclass
class BiasUpdate:
    """A corrected bias: `holder.input[index]` (the layer itself, or the Add after a MatMul)
    becomes `values` (= old bias + shift); `tensor` is the old initializer ("" when none)."""
    tensor: str
    holder: str
    index: int
    values: np.ndarray
    shift: np.ndarray


@dataclasses.dataclass
class Plan:
    quantizers: dict[str, Quantizer]
    ops: dict[str, QuantizedOp]
    fp32: dict[str, tuple[str, str]]   # node -> (op type, reason)
    preset: Preset
    bias_updates: dict[str, BiasUpdate] = dataclasses.field(default_factory=dict)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for q in self.quantizers.values():
            if q.group:
                out.setdefault(q.group, []).append(q.qid)
        return out

    def active(self, reverted: set[str] = frozenset()) -> tuple[dict[str, QuantizedOp], set[str]]:
        """(quantized ops, the quantizer ids they use) once `reverted` ops are back in fp32."""
        ops = {k: v for k, v in self.ops.items() if k not in reverted}
        used = {qid for op in ops.values() for qid in op.inputs.values()}
        return ops, used


def _is_nonnegative(g: Graph, tensor: str, depth: int = 0) -> bool:
    """The graph alone proves `tensor` >= 0 (a ReLU-like producer, seen through max-pool,
    reshape, concat, average pooling, ...)."""
    c = g.const(tensor)
    if c is not None:
        return bool(np.all(c >= 0)) if np.issubdtype(c.dtype, np.number) else False
    p = g.producer.get(tensor)
    if p is None or depth > 32:
        return False
    if nonnegative_output(p, g.const):
        return True
    if p.op_type in PRESERVES_SIGN:
        idx = DATA_INPUTS.get(p.op_type, range(len(p.input)))
        ins = [p.input[i] for i in idx if i < len(p.input) and p.input[i]]
        return bool(ins) and all(_is_nonnegative(g, t, depth + 1) for t in ins)
    return False


def build_plan(g: Graph, rules: QuantRules, preset: Preset,
               ignored: dict[str, list[str]]) -> Plan:
    quantizers: dict[str, Quantizer] = {}
    ops: dict[str, QuantizedOp] = {}
    fp32: dict[str, tuple[str, str]] = {}
    parent: dict[str, str] = {}          # union-find over quantizer ids (unified scales)

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def activation(t: str, node: str, i: int, constant: bool) -> str:
        qid = t if quantizers.get(t) is None or quantizers[t].kind == "activation" else t + "@act"
        q = quantizers.get(qid)
        if q is None:
            q = quantizers[qid] = Quantizer(
                qid=qid, tensor=t, kind="activation", levels=rules.activation_levels,
                mode=preset.activations, nonnegative=_is_nonnegative(g, t), constant=constant)
        q.consumers.append((node, i))
        return qid

    def weight(t: str, node, i: int) -> str:
        axis = None
        lin = LINEAR_OPS.get(node.op_type)
        w = g.const(t)
        if rules.weight_granularity == "per-channel" and lin is not None and w.ndim >= 1:
            axis = lin.weight_channel_axis(node, w.ndim) % w.ndim
        qid = t
        if qid in quantizers and (quantizers[qid].axis != axis or
                                  quantizers[qid].kind != "weight"):   # other use of the tensor
            qid = f"{t}@axis{axis}"
        q = quantizers.get(qid)
        if q is None:
            q = quantizers[qid] = Quantizer(
                qid=qid, tensor=t, kind="weight", levels=rules.weight_levels,
                mode=preset.weights, axis=axis, constant=True)
        q.consumers.append((node.name, i))
        return qid

    for n in g.nodes:
        rule = rules.ops.get(n.op_type)
        if rule is None:
            if n.output and all(o and not g.is_float(o) for o in n.output):
                why = "shape/integer computation"
            elif n.op_type in PRECISION_PRESERVING:
                why = "precision-preserving: runs in its input's precision, needs no quantizer"
            else:
                why = (f"computes in fp32: {n.op_type} is not quantized by "
                       f"{short_rules_path(rules.source)}")
            fp32[n.name] = (n.op_type, why)
            continue
        if n.name in ignored:
            fp32[n.name] = (n.op_type, "ignored scope: " + "; ".join(ignored[n.name]))
            continue
        act = rule.activation_indices(len(n.input))
        wts = [i for i in rule.weight_inputs if i < len(n.input)]
        idx = sorted(set(act) | set(wts))
        tensors = [(i, n.input[i]) for i in idx if n.input[i]]
        non_float = [t for _, t in tensors if not g.is_float(t)]
        if non_float:
            fp32[n.name] = (n.op_type, f"input {non_float[0]!r} is not float32")
            continue
        source = _input_from(g, [t for _, t in tensors], rule.fp32_if_input_from)
        if source is not None:
            fp32[n.name] = (n.op_type, f"reads the output of {source}: kept fp32 "
                                       f"(fp32_if_input_from in {short_rules_path(rules.source)})")
            continue
        if rule.computed_inputs_only and any(g.is_const(t) for i, t in tensors if i in act):
            fp32[n.name] = (n.op_type, "x + constant: no integer op (a bias after a MatMul is "
                                       "folded into the layer)")
            continue
        inputs: dict[int, str] = {}
        for i, t in tensors:
            if i in wts and g.is_const(t):
                inputs[i] = weight(t, n, i)
            else:
                inputs[i] = activation(t, n.name, i, constant=g.is_const(t))
        if not inputs:
            fp32[n.name] = (n.op_type, "no quantizable input")
            continue
        ops[n.name] = QuantizedOp(n.name, n.op_type, inputs)
        if rule.unified_scales:
            acts = [q for q in inputs.values() if quantizers[q].kind == "activation"]
            for q in acts[1:]:
                parent[find(q)] = find(acts[0])
    _drop_ops_feeding_fp32(g, rules, ops, fp32)
    used = {qid for op in ops.values() for qid in op.inputs.values()}
    quantizers = {k: q for k, q in quantizers.items() if k in used}
    for q in quantizers.values():
        q.consumers = [(n, i) for n, i in q.consumers if n in ops]
    for qid, q in quantizers.items():
        if q.kind == "activation":
            root = find(qid)
            if root != qid or any(find(o) == qid for o in parent if o != qid):
                q.group = "unified:" + root
    return Plan(quantizers, ops, fp32, preset)


def _input_from(g: Graph, tensors: list[str], op_types: tuple[str, ...]) -> str | None:
    """'<op type> <name>' when one of `tensors` is produced by an op of `op_types`, looking
    back through precision-preserving ops (reshape, transpose, ...)."""
    if not op_types:
        return None
    stack, seen = list(tensors), set()
    while stack:
        t = stack.pop()
        p = g.producer.get(t)
        if p is None or p.name in seen:
            continue
        seen.add(p.name)
        if p.op_type in op_types:
            return f"{p.op_type} {p.name!r}"
        if p.op_type in PRECISION_PRESERVING:
            stack.extend(x for x in p.input[:1] if x)
    return None


def _drop_ops_feeding_fp32(g: Graph, rules: QuantRules, ops: dict, fp32: dict) -> None:
    """Ops whose rule has `require_quantized_consumer` stay fp32 when some reader of their
    output (looking through precision-preserving ops) is not quantized; repeated to a fixpoint,
    since dropping one op can leave another one's output without quantized readers."""
    changed = True
    while changed:
        changed = False
        for name in list(ops):
            rule = rules.ops.get(ops[name].op_type)
            if rule is None or not rule.require_quantized_consumer:
                continue
            reader = _fp32_reader(g, g.by_name[name].output[0], ops)
            if reader is not None:
                op = ops.pop(name)
                fp32[name] = (op.op_type, f"its output feeds fp32 compute ({reader}): an integer "
                                          f"{op.op_type} would only add a requantize")
                changed = True


def _fp32_reader(g: Graph, tensor: str, ops: dict) -> str | None:
    """The first non-quantized reader of `tensor` (through precision-preserving ops), or
    None when every reader is a quantized op."""
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in g.graph_outputs:
            return f"graph output {t!r}"
        for n, _ in g.consumers.get(t, []):
            if n.name in ops:
                continue
            if n.op_type in PRECISION_PRESERVING:
                stack.extend(o for o in n.output if o)
                continue
            return f"{n.op_type} {n.name!r}"
    return None


def short_rules_path(path: str) -> str:
    return "targets/_rules/" + path.replace("\\", "/").rsplit("/", 1)[-1]


def first_layer_weights(g: Graph, plan: Plan) -> set[str]:
    """Weight quantizers of the quantized linear ops that no other linear op feeds (directly or
    through other ops): the "first layers" of NNCF's overflow fix."""
    linear = {n for n, op in plan.ops.items() if op.op_type in LINEAR_OPS}
    downstream: dict[str, bool] = {}        # tensor -> computed from some linear op's output
    out = set()
    for n in g.nodes:                        # topological order
        ins = [t for t in n.input if t and not g.is_const(t)]
        fed = any(downstream.get(t, False) for t in ins)
        if n.name in linear and not fed:
            q = plan.ops[n.name].inputs.get(LINEAR_OPS[n.op_type].weight_input)
            if q and plan.quantizers[q].kind == "weight":
                out.add(q)
        for o in n.output:
            downstream[o] = fed or n.name in linear
    return out
