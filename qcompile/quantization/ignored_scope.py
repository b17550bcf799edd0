"""Ignored scope: nodes that stay in fp32 (their inputs and weights are not quantized).

Rules, as in `nncf.IgnoredScope`: exact node `names`, op `types`, regular expression `patterns`
(matched with `re.match` against node names, i.e. anchored at the start), and `subgraphs`
(every node on a path from one of its input nodes to one of its output nodes, both included).
A rule that matches nothing is an error listing the nearest names (a typo should never leave
a model silently quantized where the user wanted fp32).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections import defaultdict

from ..errors import QuantizationError
from .graph import Graph


@dataclasses.dataclass(frozen=True)
class Subgraph:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> "Subgraph":
        """`IN1,IN2:OUT1,OUT2` (node names) -> Subgraph (for --ignore-subgraph)."""
        if text.count(":") != 1:
            raise QuantizationError(
                f"--ignore-subgraph {text!r} must look like IN_NODE[,IN_NODE...]:OUT_NODE[,...]")
        a, b = text.split(":")
        ins = tuple(x.strip() for x in a.split(",") if x.strip())
        outs = tuple(x.strip() for x in b.split(",") if x.strip())
        if not ins or not outs:
            raise QuantizationError(f"--ignore-subgraph {text!r}: needs input and output nodes")
        return Subgraph(ins, outs)


@dataclasses.dataclass(frozen=True)
class IgnoredScope:
    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    subgraphs: tuple[Subgraph, ...] = ()

    def __post_init__(self):
        for f in ("names", "types", "patterns", "subgraphs"):
            v = getattr(self, f)
            if isinstance(v, str):
                v = (v,)
            object.__setattr__(self, f, tuple(Subgraph(*s) if isinstance(s, (list, tuple)) and
                                              f == "subgraphs" else s for s in v))

    def is_empty(self) -> bool:
        return not (self.names or self.types or self.patterns or self.subgraphs)


def _near(word: str, choices: list[str], n: int = 5) -> str:
    near = difflib.get_close_matches(word, choices, n=n, cutoff=0.4)
    if not near:
        low = word.lower()
        near = [c for c in choices if low and (low in c.lower() or c.lower() in low)][:n]
    return f" Did you mean {', '.join(repr(x) for x in near)}?" if near else ""


def _subgraph_nodes(g: Graph, sg: Subgraph) -> set[str]:
    succ: dict[str, set[str]] = defaultdict(set)
    pred: dict[str, set[str]] = defaultdict(set)
    for n in g.nodes:
        for t in n.input:
            p = g.producer.get(t)
            if p is not None:
                succ[p.name].add(n.name)
                pred[n.name].add(p.name)

    def reach(starts, edges):
        seen, stack = set(starts), list(starts)
        while stack:
            for m in edges[stack.pop()]:
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
        return seen

    return reach(sg.inputs, succ) & reach(sg.outputs, pred)


def resolve(scope: IgnoredScope | None, g: Graph) -> dict[str, list[str]]:
    """Node name -> the rules that matched it. Raises QuantizationError listing every rule
    that matched nothing, each with its nearest matches."""
    if scope is None or scope.is_empty():
        return {}
    names = g.topo_names()
    name_set = set(names)
    types = sorted({n.op_type for n in g.nodes})
    matched: dict[str, list[str]] = defaultdict(list)
    problems = []
    for nm in scope.names:
        if nm in name_set:
            matched[nm].append(f"name {nm!r}")
        else:
            problems.append(f"  name {nm!r} (--ignore-name) matches no node.{_near(nm, names)}")
    for t in scope.types:
        hits = [n.name for n in g.nodes if n.op_type == t]
        if hits:
            for h in hits:
                matched[h].append(f"type {t!r}")
        else:
            problems.append(f"  type {t!r} (--ignore-type) matches no node; the model's op types "
                            f"are {', '.join(types)}.{_near(t, types)}")
    for p in scope.patterns:
        try:
            rx = re.compile(p)
        except re.error as err:
            problems.append(f"  pattern {p!r} (--ignore-regex) is not a valid regex: {err}")
            continue
        hits = [n for n in names if rx.match(n)]
        if hits:
            for h in hits:
                matched[h].append(f"pattern {p!r}")
        else:
            literal = re.sub(r"[\\^$.*+?()\[\]{}|]+", "", p)
            problems.append(f"  pattern {p!r} (--ignore-regex, re.match on node names) matches "
                            f"no node.{_near(literal, names)}")
    for sg in scope.subgraphs:
        unknown = [x for x in sg.inputs + sg.outputs if x not in name_set]
        if unknown:
            for u in unknown:
                problems.append(f"  subgraph node {u!r} (--ignore-subgraph) does not exist."
                                f"{_near(u, names)}")
            continue
        hits = _subgraph_nodes(g, sg)
        label = f"subgraph {','.join(sg.inputs)}:{','.join(sg.outputs)}"
        if not hits:
            problems.append(f"  {label} (--ignore-subgraph) is empty: no path leads from its "
                            "input nodes to its output nodes (check the order IN:OUT)")
        for h in hits:
            matched[h].append(label)
    if problems:
        raise QuantizationError("ignored scope rule(s) matching nothing:\n" + "\n".join(problems)
                                + "\nNode names are listed by `qcompile debug` and in the "
                                  "quantization report; fix or remove these rules.")
    return dict(matched)
