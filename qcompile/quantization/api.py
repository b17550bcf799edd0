"""`quantize()`: the Python entry point (`qcompile.quantize`), in the shape of `nncf.quantize`.

    import qcompile
    q = qcompile.quantize("model.onnx", calibration_data, preset="mixed", subset_size=300,
                          ignored_scope=qcompile.IgnoredScope(types=["Softmax"]),
                          target="avx512-vnni")
    onnx.save(q, "model_int8.onnx")
    print(qcompile.quantization.summary(qcompile.quantization.read_report(q)))

Steps: prepare the graph (graph.py) -> plan the quantizers from the target's rules
(placement.py) -> calibrate (calibration.py) -> fast bias correction (bias_correction.py) ->
optionally the accuracy-aware loop (accuracy_aware.py) -> write FakeQuantize or QDQ
(export.py), with the report embedded.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from onnx import ModelProto

from .. import config as _config
from ..errors import QuantizationError
from ..frontend.control_flow import (apply_input_flags, frozen_values, inline_constant_ifs,
                                     subgraph_nodes)
from . import accuracy_aware, bias_correction, calibration, export, report as _report
from .config import QuantizeConfig
from .datasets import Dataset, DatasetConfig, make_dataset, take
from .graph import Graph, load_model, prepare
from .ignored_scope import IgnoredScope, Subgraph, resolve as resolve_ignored
from .metrics import load_metric
from .placement import Plan, build_plan, first_layer_weights, short_rules_path
from .rules import rules_for_target

VERSION = "0.1.0"


@dataclasses.dataclass
class QuantizationResult:
    """The outcome of calibration: the prepared fp32 model, the plan (quantizers with their
    ranges, bias updates), the ops reverted to fp32, and the report. `model(fmt)` writes it
    in any format ("fq", "qdq", or "sim": the FakeQuantize formula in standard ops)."""
    prepared: ModelProto
    plan: Plan
    reverted: list[str]
    report: dict

    def model(self, fmt: str | None = None) -> ModelProto:
        fmt = fmt or self.report["format"]
        rep = dict(self.report, format=fmt)
        return export.write(self.prepared, self.plan, fmt, set(self.reverted), rep)


def quantize(model: str | Path | ModelProto, calibration_dataset: Any,
             preset: str | None = None, subset_size: int | None = None,
             ignored_scope: IgnoredScope | None = None, target: str | None = None,
             **kwargs: Any) -> ModelProto:
    """Quantize an fp32 ONNX model; returns the quantized `onnx.ModelProto` (FakeQuantize by
    default, QDQ with `format="qdq"`), with the report in its metadata (`read_report`).
    Arguments: see `quantize_detailed`."""
    return quantize_detailed(model, calibration_dataset, preset, subset_size, ignored_scope,
                             target, **kwargs).model()


def quantize_detailed(model: str | Path | ModelProto, calibration_dataset: Any,
             preset: str | None = None, subset_size: int | None = None,
             ignored_scope: IgnoredScope | None = None, target: str | None = None, *,
             config: QuantizeConfig | None = None, dataset_config: DatasetConfig | None = None,
             transform_fn: Callable[[Any], Any] | None = None,
             metric: str | Callable | None = None, max_drop: float | None = None,
             validation_dataset: Any = None, log: Callable[[str], None] | None = None,
             **options: Any) -> QuantizationResult:
    """Quantize an fp32 ONNX model and return everything it decided (`QuantizationResult`).

    model: path or ModelProto. calibration_dataset: see `datasets.py` (path, array, iterable,
    nncf.Dataset); `transform_fn` maps each item first. preset / subset_size / target /
    metric / max_drop and any other `QuantizeConfig` field (as keyword `options`) override
    `config`. ignored_scope: `IgnoredScope(names, types, patterns, subgraphs)`, merged with the
    config's ignore_* lists. metric: `callable(predict, samples) -> float` or "module:function"
    (accuracy-aware mode). log: receives progress messages (default: none)."""
    known = {f.name for f in dataclasses.fields(QuantizeConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        import difflib
        near = {u: difflib.get_close_matches(u, sorted(known), n=1) for u in unknown}
        hint = "; ".join(f"{u!r} (did you mean {n[0]!r}?)" if n else repr(u)
                         for u, n in near.items())
        raise QuantizationError(f"quantize(): unknown option(s) {hint}; options are the "
                                f"QuantizeConfig fields: {', '.join(sorted(known))}")
    cfg = dataclasses.replace(config or QuantizeConfig(), **{
        k: v for k, v in dict(preset=preset, subset_size=subset_size, target=target,
                              max_drop=max_drop, **options).items() if v is not None})
    if isinstance(metric, str):
        cfg = dataclasses.replace(cfg, metric=metric)
    log = log or (lambda s: None)
    t0 = time.time()
    src = model if isinstance(model, (str, Path)) else getattr(model.graph, "name", "model")
    fp32 = load_model(model)
    fp32 = apply_input_flags(fp32, cfg.input_shapes, cfg.input_values, str(src),
                             require_static=False)
    # an If whose condition is constant (frozen input, static shapes) becomes its taken
    # branch, so the ops inside it are seen and quantized
    fp32, inlined_ifs = inline_constant_ifs(fp32, str(src))
    if cfg.subset_size <= 0:
        raise QuantizationError(f"--subset-size {cfg.subset_size} must be positive")

    spec, rules = rules_for_target(cfg.target)
    preset_obj = rules.preset(cfg.preset)
    prepared, prep_log = prepare(fp32, fold_batchnorm=cfg.fold_batchnorm)
    g = Graph(prepared)
    scope = _merge_scope(ignored_scope, cfg)
    ignored = resolve_ignored(scope, g)
    plan = build_plan(g, rules, preset_obj, ignored)
    in_bodies = subgraph_nodes(prepared)     # control flow left: nothing in it is quantized
    for e in in_bodies:
        plan.fp32.setdefault(e["node"], (e["op"], e["reason"]))
    if not plan.ops:
        hint = ""
        if in_bodies:
            kinds = ", ".join(f"{k} x{v}" for k, v in
                              Counter(e["op"] for e in in_bodies).most_common(6))
            hint = f"; {len(in_bodies)} nodes ({kinds}) are {in_bodies[0]['reason']}"
        raise QuantizationError(
            f"nothing to quantize in {src}: no node matches the rules of target {spec.name} "
            f"({rules.source}) outside the ignored scope{hint}")

    ds = make_dataset(calibration_dataset, prepared, dataset_config, transform_fn)
    samples = list(take(ds, cfg.subset_size))
    if not samples:
        raise QuantizationError("the calibration dataset is empty")
    calibration.check_samples(samples)
    if len(samples) < cfg.subset_size:
        log(f"note: calibration data has {len(samples)} samples (< --subset-size "
            f"{cfg.subset_size}); using all of them")
    threads = cfg.threads or None
    batch = cfg.batch_size if _dynamic_batch(prepared) else 1
    half = frozenset()
    if cfg.overflow_fix == "auto":   # the target's data decides (targets/*.toml)
        cfg = dataclasses.replace(cfg, overflow_fix=spec.int8.ptq_overflow_fix)
        log(f"overflow fix for target {spec.name}: {cfg.overflow_fix}")
    if cfg.overflow_fix == "first-layer":
        half = frozenset(first_layer_weights(g, plan))
    elif cfg.overflow_fix == "all":
        half = frozenset(q.qid for q in plan.quantizers.values() if q.kind == "weight")
    elif cfg.overflow_fix != "none":
        raise QuantizationError(f"--overflow-fix {cfg.overflow_fix!r}: use none, first-layer "
                                "or all")
    settings = calibration.CalibrationSettings(half_range_weights=half,
        activation_estimator=cfg.activation_stat, weight_estimator=cfg.weight_stat,
        percentile=cfg.percentile, histogram_bins=cfg.histogram_bins,
        histogram_sample=cfg.histogram_sample, batch_size=batch,
        threads=threads, progress=cfg.progress)
    log(f"calibrating on {len(samples)} samples ({cfg.activation_stat})")
    stats = calibration.collect(prepared, g, plan, samples, settings)
    non_finite = calibration.non_finite(stats)
    for t, n in non_finite.items():
        log(f"warning: activation {t!r} held {n} NaN/Inf values during calibration; its range "
            "comes from the finite values only")
    _drop_non_float(plan, stats)
    calibration.assign_ranges(g, plan, stats, settings)
    zero = calibration.zero_ranges(g, plan)
    for t, what in zero.items():
        log(f"warning: quantizer of {t!r}: {what}")

    bc_skipped: dict[str, str] = {}
    bc_samples: list = []
    if cfg.fast_bias_correction:
        bc_samples = bias_correction.subset(samples, cfg.bias_correction_subset_size)
        bc_skipped = bias_correction.correct(prepared, g, plan, bc_samples, batch, threads,
                                             cfg.progress)
        for node, why in bc_skipped.items():
            if "not finite" in why:
                log(f"warning: bias correction of {node!r} skipped: {why}")

    aa = None
    reverted: list[str] = []
    metric_fn = metric if callable(metric) else (load_metric(cfg.metric) if cfg.metric else None)
    if metric_fn is not None:
        if validation_dataset is not None or cfg.val_data:
            vds = make_dataset(validation_dataset if validation_dataset is not None
                               else cfg.val_data, prepared, dataset_config, transform_fn)
            val = list(take(vds, cfg.validation_size or None))
        else:
            val = samples[:cfg.validation_size] if cfg.validation_size else samples
        aa = accuracy_aware.run(prepared, plan, metric_fn, val,
                                samples[:cfg.ranking_subset_size], cfg.max_drop, cfg.drop_type,
                                cfg.max_reverts, threads, cfg.progress, log)
        reverted = aa.reverted

    rep = _report.build(
        plan, reverted,
        tool={"name": "qcompile", "version": VERSION, "onnxruntime": _ort_version()},
        model=str(src), target=spec.name, rules=short_rules_path(rules.source),
        preset=dataclasses.asdict(preset_obj), format=cfg.format,
        config=_config.to_dict(cfg),
        calibration={"samples": len(samples), "activation_stat": cfg.activation_stat,
                     "weight_stat": cfg.weight_stat, "batch_size": batch,
                     "non_finite_activations": non_finite, "zero_ranges": zero},
        prepare=dataclasses.asdict(prep_log),
        ignored_scope={k: v for k, v in ignored.items()},
        accuracy_aware=aa.to_dict() if aa else None,
        control_flow={"frozen_inputs": frozen_values(cfg.input_values),
                      "inlined_ifs": inlined_ifs,
                      "nodes_in_bodies": len(in_bodies),
                      "owners": sorted({e["owner"] for e in in_bodies})},
        seconds=round(time.time() - t0, 2))
    rep["bias_correction"].update(enabled=cfg.fast_bias_correction, skipped=bc_skipped,
                                  samples=len(bc_samples))
    return QuantizationResult(prepared, plan, reverted, rep)


def _merge_scope(scope: IgnoredScope | None, cfg: QuantizeConfig) -> IgnoredScope:
    scope = scope or IgnoredScope()
    return IgnoredScope(
        names=tuple(scope.names) + tuple(cfg.ignore_name),
        types=tuple(scope.types) + tuple(cfg.ignore_type),
        patterns=tuple(scope.patterns) + tuple(cfg.ignore_regex),
        subgraphs=tuple(scope.subgraphs) + tuple(Subgraph.parse(s) for s in cfg.ignore_subgraph))


def _dynamic_batch(model: ModelProto) -> bool:
    from .runner import input_specs
    specs = input_specs(model)
    return bool(specs) and all(dims and dims[0] is None for _, dims, _ in specs)


def _drop_non_float(plan: Plan, stats) -> None:
    """Quantizers whose tensor turned out not to be float32 are removed with their ops."""
    bad = {q.qid for q in plan.quantizers.values() if q.kind == "activation"
           and stats[q.tensor].dtype and not stats[q.tensor].dtype.startswith("float")}
    for name in [n for n, op in plan.ops.items() if set(op.inputs.values()) & bad]:
        op = plan.ops.pop(name)
        t = next(plan.quantizers[q].tensor for q in op.inputs.values() if q in bad)
        plan.fp32[name] = (op.op_type, f"input {t!r} is {stats[t].dtype}, not float")
    _, used = plan.active()
    for qid in list(plan.quantizers):
        if qid not in used:
            del plan.quantizers[qid]


def _ort_version() -> str:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "-"


def save(model: ModelProto, path: str | Path) -> Path | None:
    """Save a quantized model. One over 2 GB keeps its weights in `<file name>.data` next
    to it (ONNX external data; `model` is not modified): returns that file, else None."""
    from ..frontend import large_model

    return large_model.save(model, path)


__all__ = ["quantize", "quantize_detailed", "QuantizationResult", "save", "IgnoredScope",
           "Subgraph", "QuantizeConfig", "DatasetConfig", "Dataset"]
