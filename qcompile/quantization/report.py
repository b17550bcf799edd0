"""The quantization report: everything `quantize` decided, as JSON-able data and as text.

It is embedded in the output model (`metadata_props["qcompile.quantization"]`, read back with
`read_report()`), printed by the CLI, and optionally written with `--report FILE`.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx

from .export import get_report
from .placement import Plan


def _rng(v) -> list[float] | float:
    a = np.asarray(v, np.float64).reshape(-1)  # NumPy >= 2.4: float() of a 1-element
    return float(a[0]) if a.size == 1 else [float(a.min()), float(a.max())]  # ndim>0 fails


def quantizer_entry(q) -> dict:
    e = {"tensor": q.tensor, "kind": q.kind, "levels": q.levels, "mode": q.mode,
         "consumers": [f"{n}:{i}" for n, i in q.consumers]}
    if q.kind == "activation":
        e.update(unsigned=bool(q.unsigned), estimator=q.estimator,
                 raw_range=list(q.raw_range) if q.raw_range else None,
                 input_low=_rng(q.input_low), input_high=_rng(q.input_high))
        if q.group:
            e["unified_group"] = q.group
        if q.constant:
            e["constant"] = True
    else:
        e.update(axis=q.axis, estimator=q.estimator, channels=int(np.size(q.input_high)),
                 input_high_range=_rng(q.input_high))
    return e


def build(plan: Plan, reverted: list[str], **sections) -> dict:
    ops, used = plan.active(set(reverted))
    fp32 = dict(plan.fp32)
    for r in reverted:
        fp32[r] = (plan.ops[r].op_type, "reverted to fp32 by the accuracy-aware loop")
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, (_, reason) in fp32.items():
        by_reason[reason].append(name)
    report = {
        "quantized_ops": {"count": len(ops),
                          "by_type": dict(Counter(o.op_type for o in ops.values())),
                          "nodes": list(ops)},
        "fp32_ops": {"count": len(fp32), "by_type": dict(Counter(t for t, _ in fp32.values())),
                     "by_reason": dict(by_reason)},
        "quantizers": [quantizer_entry(plan.quantizers[q]) for q in plan.quantizers
                       if q in used],
        "bias_correction": {
            "corrected": {k: float(np.abs(u.shift).max()) for k, u in plan.bias_updates.items()
                          if k in ops}},
    }
    report.update(sections)
    return report


def read_report(model: onnx.ModelProto | str) -> dict | None:
    """The report embedded in a model written by `quantize` (None if there is none)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return get_report(model)


def summary(r: dict) -> str:
    """A few lines for the terminal."""
    lines = []
    q, f = r["quantized_ops"], r["fp32_ops"]
    lines.append(f"quantized {q['count']} ops ({_counts(q['by_type'])}) with "
                 f"{len(r['quantizers'])} FakeQuantize; preset {r['preset']['name']}, target "
                 f"{r['target']}, rules {r['rules']}")
    cal = r.get("calibration", {})
    if cal:
        lines.append(f"calibration: {cal['samples']} samples, activations "
                     f"{cal['activation_stat']}, "
                     f"weights {cal['weight_stat']}")
        for t, what in (cal.get("zero_ranges") or {}).items():
            lines.append(f"  empty range: {t}: {what}")
    p = r.get("prepare", {})
    if p:
        lines.append(f"prepared: {p.get('constants_to_initializers', 0)} Constant nodes -> "
                     f"initializers, {len(p.get('batchnorms_folded', []))} BatchNormalization "
                     f"folded, {p.get('nodes_named', 0)} nodes named")
    cf = r.get("control_flow") or {}
    parts = []
    if cf.get("frozen_inputs"):
        parts.append("frozen inputs " + ", ".join(
            f"{k}={','.join(str(x) for x in v[:4])}{',...' if len(v) > 4 else ''}"
            for k, v in cf["frozen_inputs"].items()))
    if cf.get("inlined_ifs"):
        parts.append(f"{len(cf['inlined_ifs'])} If node(s) with a constant condition replaced "
                     "by their taken branch")
    if cf.get("nodes_in_bodies"):
        parts.append(f"{cf['nodes_in_bodies']} nodes left inside the bodies of "
                     f"{', '.join(cf.get('owners', []))}: not quantized (listed below)")
    if parts:
        lines.append("control flow: " + "; ".join(parts))
    bc = r["bias_correction"]
    if bc.get("enabled"):
        lines.append(f"fast bias correction ({bc.get('samples', '?')} samples): "
                     f"{len(bc['corrected'])} layers corrected, "
                     f"{len(bc.get('skipped', {}))} not ({_reasons(bc.get('skipped', {}))})")
    lines.append(f"not quantized: {f['count']} ops ({_counts(f['by_type'])}):")
    for reason, nodes in sorted(f["by_reason"].items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(nodes[:4]) + (f" (+{len(nodes) - 4})" if len(nodes) > 4 else "")
        lines.append(f"  {len(nodes):4d}  {reason}: {shown}")
    aa = r.get("accuracy_aware")
    if aa:
        lines.append(f"accuracy-aware: metric fp32 {aa['metric_fp32']:.6g}, quantized "
                     f"{aa['metric_quantized']:.6g}, final {aa['metric_final']:.6g} (drop "
                     f"{aa['drop_final']:.4g} {aa['drop_type']}, allowed {aa['max_drop']:g}: "
                     f"{'met' if aa['met'] else 'NOT MET'})")
        for s in aa["steps"]:
            lines.append(f"  reverted {s['reverted']} ({s['op_type']}): metric {s['metric']:.6g}, "
                         f"drop {s['drop']:.4g}")
    return "\n".join(lines)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def _reasons(d: dict) -> str:
    c = Counter(d.values())
    return "; ".join(f"{v}: {k}" for k, v in c.items()) or "-"
