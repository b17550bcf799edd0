"""Control flow on the ONNX graph: frozen inputs, `If` nodes with a constant condition, and
what is left inside control-flow bodies.

`freeze_inputs(model, values)`: `--input-value NAME=V[,V...]` (OpenVINO's
`ovc --input "sr[]->16000"`): each named graph input becomes an initializer of the input's
dtype and shape and leaves the graph inputs, so what depends only on it (silero VAD's
sample-rate `If`) becomes constant.

`inline_if(node, cond, names)`: the nodes and initializers that replace an `If` whose
condition is known: the taken branch's nodes, its outputs renamed to the If's outputs, its
initializers hoisted, every other branch-local name that is already used in the model renamed
to a unique one (references from nested subgraphs follow); references to outer-scope tensors
stay as they are. `fold.fold_constants` calls it for every If whose condition it has folded
(the build path: `frontend.prepare`).

`inline_constant_ifs(model)`: the same for the PTQ (`qcompile quantize`): a model with If
nodes is constant-folded and shape-inferred until nothing changes, as for the build.

`subgraph_nodes(model)`: every node inside the bodies of the If/Loop/Scan nodes still in the
graph, with the owner, the body and what the condition depends on, so the build's precision
table and the quantization report name them (neither the PTQ nor the low-precision passes
look inside control flow).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputError

CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
FLAG = "--input-value"


# ---- --input-value --------------------------------------------------------------------------

def _dims(vi: onnx.ValueInfoProto) -> list | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _fmt(vals: Iterable) -> str:
    vals = list(vals)
    shown = ",".join(str(v) for v in vals[:8])
    return shown + (f",... ({len(vals)} values)" if len(vals) > 8 else "")


def _value_array(name: str, vals: Any, elem_type: int, dims: list | None,
                 source: str) -> np.ndarray:
    """The values of `--input-value name=...` as an array of the input's dtype and shape."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise InputError(f"{FLAG} {name}: input {name!r} of {source} has element type "
                         f"{onnx.TensorProto.DataType.Name(elem_type) if elem_type else '?'}; "
                         "only numeric and bool inputs can be frozen")
    raw = np.asarray(vals, dtype=object).reshape(-1)
    try:
        if dtype.kind == "b":
            bad = [v for v in raw if not (isinstance(v, (bool, np.bool_)) or v in (0, 1))]
            if bad:
                raise ValueError(f"{bad[0]!r} is not a bool (true/false/1/0)")
            arr = np.array([bool(v) for v in raw], dtype=dtype)
        elif dtype.kind in "iu":
            as_float = np.array([float(v) for v in raw], dtype=np.float64)
            if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
                bad = next(v for v, f in zip(raw, as_float) if not np.isfinite(f) or f != round(f))
                raise ValueError(f"{bad!r} is not an integer")
            info = np.iinfo(dtype)
            ints = [int(v) if isinstance(v, (int, np.integer)) else int(f)
                    for v, f in zip(raw, as_float)]
            out = [v for v in ints if not info.min <= v <= info.max]
            if out:
                raise ValueError(f"{out[0]} is outside the range of {dtype.name}")
            arr = np.array(ints, dtype=dtype)
        else:
            arr = np.array([float(v) for v in raw], dtype=dtype)
    except (TypeError, ValueError) as err:
        raise InputError(f"{FLAG} {name}={_fmt(raw)}: input {name!r} of {source} is "
                         f"{dtype.name}: {err}") from None
    n = arr.size
    if dims is None:                                  # unknown rank: a scalar or a vector
        return arr.reshape(()) if n == 1 else arr
    known = [d for d in dims if d is not None]
    size = math.prod(known)
    unknown = [i for i, d in enumerate(dims) if d is None]
    if not unknown:
        if n != size:
            raise InputError(
                f"{FLAG} {name} gives {n} value(s), but input {name!r} of {source} has shape "
                f"{list(dims)} ({size} element{'s' if size != 1 else ''}); give exactly "
                f"{size} comma-separated value(s)")
        return arr.reshape(dims)
    if len(unknown) == 1 and size > 0 and n % size == 0 and n > 0:
        shape = list(dims)
        shape[unknown[0]] = n // size
        return arr.reshape(shape)
    raise InputError(
        f"{FLAG} {name} gives {n} value(s), but input {name!r} of {source} has dims "
        f"{['?' if d is None else d for d in dims]} that do not fix its shape; add "
        f"--input-shape {name}=D1,D2,... for it")


def freeze_inputs(model: onnx.ModelProto, values: dict[str, Any] | None,
                  shapes: dict[str, tuple[int, ...]] | None = None,
                  source: str = "model") -> onnx.ModelProto:
    """A copy of `model` in which each input named in `values` is an initializer holding that
    value (dtype from the input, shape from `shapes` / the input's dims) and no longer a graph
    input. A name that is already an initializer holding the same value is accepted (frozen
    before: `qcompile compile` freezes for its data and gate, then the PTQ again); any other
    name, or a value of the wrong size or type, is an InputError naming the input and the
    flag."""
    if not values:
        return model
    shapes = dict(shapes or {})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    inputs = {vi.name: vi for vi in g.input}
    real_inputs = [n for n in inputs if n not in inits]
    for name, vals in values.items():
        if name not in inputs:
            if name in inits:   # frozen before (or a constant by construction): same value?
                have = numpy_helper.to_array(inits[name])
                want = _value_array(name, vals, inits[name].data_type, list(have.shape), source)
                if np.array_equal(have, want):
                    continue
                raise InputError(
                    f"{FLAG} {name}={_fmt(np.asarray(vals).reshape(-1))}: {name!r} is not an "
                    f"input of {source} but a constant holding {_fmt(have.reshape(-1))}; its "
                    f"inputs are {real_inputs}")
            raise InputError(f"{FLAG} names {name!r}, which is not an input of {source}; its "
                             f"inputs are {real_inputs}")
        vi = inputs[name]
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"{FLAG} {name}: input {name!r} of {source} is not a tensor")
        dims = list(shapes[name]) if name in shapes else _dims(vi)
        arr = _value_array(name, vals, vi.type.tensor_type.elem_type, dims, source)
        if name in inits:        # an input with a default (IR < 4 style): the value replaces it
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
        else:
            g.initializer.append(numpy_helper.from_array(arr, name))
        keep = [i for i in g.input if i.name != name]
        del g.input[:]
        g.input.extend(keep)
    return out



def apply_input_flags(model: onnx.ModelProto, shapes: dict | None, values: dict | None,
                      source: str, require_static: bool = True) -> onnx.ModelProto:
    """`--input-value` (frozen inputs become initializers), then `--input-shape` of the
    inputs left (`shapes.fix_input_shapes`; `require_static=False` lets dynamic dims stay:
    the PTQ's calibration data gives them)."""
    from .shapes import fix_input_shapes

    if values:
        model = freeze_inputs(model, values, shapes, source)
        shapes = {k: v for k, v in (shapes or {}).items() if k not in values}
    if shapes or require_static:
        model = fix_input_shapes(model, shapes, source, require_static=require_static)
    return model


def frozen_values(values: dict[str, Any] | None) -> dict[str, list]:
    """JSON-able form of `--input-value`s (reports)."""
    return {k: np.asarray(v).reshape(-1).tolist() for k, v in (values or {}).items()}


# ---- names ----------------------------------------------------------------------------------

def _graphs_of(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for i, sg in enumerate(a.graphs):
                yield f"{a.name}[{i}]", sg


def _defined(g: onnx.GraphProto) -> set[str]:
    return ({i.name for i in g.input} | {t.name for t in g.initializer}
            | {t.values.name for t in g.sparse_initializer}
            | {o for n in g.node for o in n.output if o})


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors the subgraphs of `node` read (recursively)."""
    out: set[str] = set()
    for _, sg in _graphs_of(node):
        out |= _graph_refs(sg)
    return out


def _graph_refs(g: onnx.GraphProto) -> set[str]:
    local = _defined(g)
    refs = {i for n in g.node for i in n.input if i}
    refs |= {o.name for o in g.output}
    for n in g.node:
        refs |= implicit_inputs(n)
    return refs - local


class Names:
    """How often each value name and node name is defined in a model (every graph, subgraphs
    included), kept up to date while Ifs are inlined: a branch-local name that is defined
    anywhere outside the If being replaced must be renamed."""

    def __init__(self, graph: onnx.GraphProto):
        self.values: Counter = Counter()
        self.nodes: Counter = Counter()
        self._count(graph, 1)

    def _count(self, g: onnx.GraphProto, sign: int) -> None:
        for t in _defined(g):
            self.values[t] += sign
        for n in g.node:
            self.node(n, sign, outputs=False)

    def node(self, n: onnx.NodeProto, sign: int, outputs: bool = True) -> None:
        """Count (sign 1) or uncount (-1) node `n`: its name, its outputs (when `outputs`: a
        top-level graph counts them through `_defined`) and everything in its subgraphs."""
        if outputs:
            for o in n.output:
                if o:
                    self.values[o] += sign
        if n.name:
            self.nodes[n.name] += sign
        for _, sg in _graphs_of(n):
            self._count(sg, sign)

    def fresh(self, base: str, counter: Counter) -> str:
        name, k = f"{base}__inl", 1
        while counter[name] > 0:
            k += 1
            name = f"{base}__inl{k}"
        counter[name] += 1
        return name


def _rename_refs(g: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename references to outer-scope tensors inside subgraph `g` (names `g` defines itself
    shadow the outer ones and are left alone)."""
    inner = {k: v for k, v in rename.items() if k not in _defined(g)}
    if not inner:
        return
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in inner:
                n.input[i] = inner[t]
        for _, sg in _graphs_of(n):
            _rename_refs(sg, inner)
    for o in g.output:
        if o.name in inner:
            o.name = inner[o.name]


# ---- inlining -------------------------------------------------------------------------------

@dataclasses.dataclass
class Inlined:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    branch: str


def taken_branch(cond: Any) -> str | None:
    c = np.asarray(cond)
    if c.size != 1:
        return None
    return "then_branch" if bool(c.reshape(-1)[0]) else "else_branch"


def inline_if(node: onnx.NodeProto, cond: Any, names: Names) -> Inlined | None:
    """What replaces If `node` when its condition is `cond` (None: leave it: a condition that
    is not one element, a branch missing, with inputs or sparse initializers). `names`: the
    model's `Names`, updated (the If and its bodies leave, the inlined nodes come in)."""
    branch = taken_branch(cond)
    graph = next((sg for name, sg in _graphs_of(node) if name == branch), None)
    if branch is None or graph is None or graph.sparse_initializer or graph.input:
        return None
    names.node(node, -1)
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    local = _defined(g)
    init_names = {t.name for t in g.initializer}
    rename: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    owner = node.name or (node.output[0] if node.output else "If")
    for bo, io in zip(g.output, node.output):
        if not io:
            continue
        if bo.name in local and bo.name not in init_names and bo.name not in rename:
            rename[bo.name] = io
        else:   # an outer tensor, an initializer of the branch, or an output listed twice
            extra.append((bo.name, io))
    for t in set(rename.values()) | {dst for _, dst in extra}:   # the If's outputs
        names.values[t] += 1
    clash = sorted(t for t in local if t not in rename and names.values[t] > 0)
    for t in local - set(clash) - set(rename):
        names.values[t] += 1
    for t in clash:
        rename[t] = names.fresh(t, names.values)
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in rename:
                n.input[i] = rename[t]
        for i, t in enumerate(n.output):
            if t in rename:
                n.output[i] = rename[t]
        for _, sg in _graphs_of(n):
            _rename_refs(sg, rename)
            names._count(sg, 1)
        if n.name:
            if names.nodes[n.name] > 0:
                n.name = names.fresh(n.name, names.nodes)
            else:
                names.nodes[n.name] += 1
    nodes = list(g.node)
    for src, dst in extra:
        nm = names.fresh(f"{owner}/{branch}/Identity", names.nodes)
        nodes.append(helper.make_node("Identity", [rename.get(src, src)], [dst], name=nm))
    inits = []
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
        inits.append(t)
    return Inlined(nodes, inits, branch)


# ---- the PTQ path ----------------------------------------------------------------------------

def inline_constant_ifs(model: onnx.ModelProto, source: str = "model"
                        ) -> tuple[onnx.ModelProto, list[dict]]:
    """For the PTQ, which otherwise works on the graph as given: when `model` has If nodes,
    fold constants and re-infer shapes until nothing changes (as `frontend.prepare` does
    for the build), so each If whose condition becomes constant (a frozen input, static
    shapes) is replaced by its taken branch. Returns (model, one entry per inlined If:
    node, branch, condition); the model as given when no If was inlined."""
    if not any(n.op_type == "If" for n in model.graph.node):
        return model, []
    from ..errors import ModelError
    from .fold import fold_to_fixpoint
    from .shapes import infer_shapes

    log: list[dict] = []
    try:
        m = infer_shapes(model, source)
    except ModelError:      # shapes are a help here, not a requirement
        m = model
    m, _ = fold_to_fixpoint(m, source, inlined=log, shapes_optional=True)
    return (m, log) if log else (model, [])


# ---- what is left inside control flow -------------------------------------------------------

def _input_deps(g: onnx.GraphProto, tensor: str) -> tuple[list[str], list[str]]:
    """(graph inputs whose values `tensor` depends on, graph inputs only whose shapes it
    depends on: reached through Shape / Size only)."""
    inits = {t.name for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    producer = {o: n for n in g.node for o in n.output if o}
    seen: set[tuple[str, bool]] = set()
    stack, by_value, by_shape = [(tensor, False)], set(), set()
    while stack:
        t, via_shape = stack.pop()
        if (t, via_shape) in seen:
            continue
        seen.add((t, via_shape))
        if t in inputs:
            (by_shape if via_shape else by_value).add(t)
        n = producer.get(t)
        if n is not None:
            shape_of = via_shape or n.op_type in ("Shape", "Size")
            stack.extend((i, shape_of) for i in n.input if i)
            stack.extend((i, shape_of) for i in implicit_inputs(n))
    return ([i for i in inputs if i in by_value],
            [i for i in inputs if i in by_shape and i not in by_value])


def subgraph_nodes(model: onnx.ModelProto) -> list[dict]:
    """One entry per node inside the body of an If/Loop/Scan of the top-level graph
    (recursively): node (its name, or owner/body/#i when unnamed or taken), op, owner (the
    top-level control-flow node), body ("then_branch", "else_branch", "body"; nested:
    "then_branch/inner_if/else_branch") and reason (for an If: the graph inputs whose value or
    shape its condition depends on, and the flag that would make it constant)."""
    g = model.graph
    taken = {n.name for n in g.node if n.name}
    out: list[dict] = []

    def walk(sg, owner, path, reason):
        for i, n in enumerate(sg.node):
            if n.name and n.name not in taken:
                name = n.name
            else:
                name = f"{owner}/{path}/{n.name or '#' + str(i)}"
            taken.add(name)
            out.append({"node": name, "op": n.op_type, "owner": owner, "body": path,
                        "reason": reason})
            for attr, inner in _graphs_of(n):
                walk(inner, owner, f"{path}/{n.name or '#' + str(i)}/{attr}", reason)

    for k, n in enumerate(g.node):
        if n.op_type not in CONTROL_FLOW_OPS and not any(True for _ in _graphs_of(n)):
            continue
        owner = n.name or f"#{k}"
        if n.op_type == "If":
            values, shapes = _input_deps(g, n.input[0]) if n.input else ([], [])
            hint = ""
            if values:
                hint += (f"; the condition depends on the value of input(s) {values}: if fixed, "
                         "freeze with " + " ".join(f"{FLAG} {d}=VALUE" for d in values))
            if shapes:
                hint += (f"; the condition depends on the shape of input(s) {shapes}: give "
                         "static shapes with " + " ".join(f"--input-shape {d}=D1,D2,..."
                                                          for d in shapes))
            reason = (f"inside If {owner!r}, whose condition is computed at run time: qcompile "
                      f"quantizes and lowers to int8 only the top-level graph{hint}")
        else:
            reason = (f"inside the body of {n.op_type} {owner!r}: qcompile quantizes and lowers "
                      "to int8 only the top-level graph")
        for attr, sg in _graphs_of(n):
            walk(sg, owner, attr, reason)
    return out
