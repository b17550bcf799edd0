"""`qcompile build`: ONNX model -> DIR/model.so + DIR/model.json.

Steps: resolve the target (targets/ data) -> import (frontend/) -> low-precision passes
(relay_passes/pipeline.py; nothing to do for fp32) -> kernel dispatch for the target's int8
templates -> fusion -> tuning (optional, MetaSchedule) -> schedules -> TVM build -> export.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from . import artifact, targets
from .config import (flag, parse_duration, parse_shape_assignment, parse_value_assignment,
                     to_dict)
from .errors import QCompileError


@dataclasses.dataclass
class BuildConfig:
    target: str = flag("host", help="target name from `qcompile targets`, or 'host' to pick "
                       "the best one this CPU runs")
    cross: bool = flag(False, help="build for a target this CPU cannot execute (no run check)")
    input_shapes: dict[str, tuple[int, ...]] = flag(
        default_factory=dict, name="--input-shape", parse=parse_shape_assignment, repeat=True,
        metavar="NAME=D1,D2,...", help="static shape for an input (repeatable)")
    input_values: dict[str, tuple[float, ...]] = flag(
        default_factory=dict, name="--input-value", parse=parse_value_assignment, repeat=True,
        metavar="NAME=V[,V...]", help="freeze an input to a constant (repeatable; like "
        "OpenVINO's --input \"sr[]->16000\"): it becomes an initializer of the input's dtype "
        "and leaves the graph inputs, and an If whose condition depends only on it is replaced "
        "by its taken branch")
    trials: int = flag(0, help="MetaSchedule tuning trials in total (0: no tuning; default "
                       "schedules and any records already in --tuning-db are used)")
    tuning_db: str | None = flag(None, help="tuning database directory (created if missing, "
                                 "reused across builds)")
    num_threads: int | None = flag(None, help="threads the code is built and tuned for "
                                   "(default: physical cores)")
    strict: bool = flag(False, help="fail if any quantized op cannot run in int8 instead of "
                        "reporting it and keeping it in f32, or if any kernel falls back from "
                        "its template schedule (model.json `fallbacks`)")
    seed: int | None = flag(None, help="random seed for tuning")
    fast_math: bool = flag(False, help="compute f32 erf/exp/tanh with TVM's fast "
                           "approximations (abs. error ~1e-7; GELU 4x faster); default: exact")
    # tuning on target machines, time budget, shipped databases (qcompile/tuning, docs/tuning.md)
    time_budget: float | None = flag(None, parse=parse_duration, metavar="DURATION",
                                     help="stop tuning after this long (90s, 20m, 1.5h); "
                                     "measured records are kept, a rerun resumes")
    rpc: str | None = flag(None, metavar="HOST:PORT", help="measure tuning candidates on the "
                           "TVM RPC servers registered with this tracker (`qcompile rpc`); "
                           "candidates are built here")
    key: str | None = flag(None, help="device key of the RPC servers to measure on (--rpc)")
    winograd: bool = flag(True, help="3x3 stride-1 int8 convs as exact integer Winograd "
                          "F(2x2, 3x3) where the target file allows it and the direct kernel "
                          "would be the widened one (--no-winograd: direct kernels only)")
    pretuned: bool = flag(True, help="use the pre-tuned database shipped for the target "
                          "(qcompile/pretuned/) for kernels --tuning-db has no record of "
                          "(--no-pretuned: off)")


@dataclasses.dataclass
class BuildResult:
    out_dir: Path
    meta: dict
    seconds: float


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def build(model, config: BuildConfig, out_dir, quiet: bool = False,
          tune_only: bool = False, tune_options: dict | None = None) -> BuildResult:
    """tune_only (`qcompile tune`): stop after tuning; out_dir is not written (may be None).
    tune_options: extra keyword arguments for qcompile.tuning.tuner.tune (scripts)."""
    from . import codegen, frontend
    from .fallbacks import FallbackLog
    from .relay_passes import pipeline as lp
    from .report import int8_kernels_line, precision_table
    from .util import versions

    t0 = time.time()
    # with --rpc the candidates run on the servers, so this CPU need not run the target
    spec = targets.resolve(config.target, cross=config.cross or bool(config.rpc))
    if config.trials != 0 and not config.tuning_db:
        raise QCompileError("--trials needs --tuning-db DIR: the measured records are kept "
                            "there and reused by later builds")
    if config.trials != 0 and config.cross and not config.rpc:
        raise QCompileError("--trials measures candidates on this machine, which cannot run "
                            f"target {spec.name!r} (--cross); tune on the target machine "
                            "(qcompile tune --rpc) and pass its --tuning-db")
    target = spec.tvm_target(config.num_threads)
    _log(f"qcompile: target {spec.name} ({spec.description})", quiet)
    imported = frontend.import_onnx(model, config.input_shapes, config.input_values)
    _log(f"qcompile: imported {imported.source} ({len(imported.onnx_model.graph.node)} nodes, "
         f"{imported.folded_nodes} folded)", quiet)
    ctx = lp.LowPrecisionContext(spec=spec, strict=config.strict,
                                 node_names=imported.node_names)
    mod = lp.run(imported.mod, ctx)
    table = precision_table(mod, imported, ctx)
    dispatch_report: list = []
    fallbacks = FallbackLog()
    mod, kernel_default = _dispatch_kernels(mod, spec, dispatch_report, fallbacks,
                                            winograd=config.winograd)
    for e in dispatch_report:  # an integer op no template takes runs the generic kernel
        if "left_alone" in e:
            fallbacks.add(e["var"], f"{spec.family} int8 dispatch ({e['op']})",
                          "generic int8 kernel (no dot-product template)", e["left_alone"])
    int8_kernels = _summarize_dispatch(dispatch_report)
    if int8_kernels_line(int8_kernels):
        _log("qcompile: " + int8_kernels_line(int8_kernels), quiet)
    fused, kernel_map = codegen.fuse_with_map(mod, target, config.fast_math)
    database, tune_summary = None, None
    if config.tuning_db:
        from .tuning import tuner
        from .tuning.rpc import RPCSettings

        rpc = RPCSettings.from_flags(config.rpc, config.key) if config.rpc else None
        measure = {}
        if spec.family == "opencl":  # candidates are measured through pyopencl (qcompile.gpu)
            from .gpu import tuning as gpu_tuning

            measure = gpu_tuning.builder_and_runner(spec, rpc=rpc.as_dict() if rpc else None)
        trials, per_task = config.trials, None
        if trials < 0:  # `qcompile tune` without --trials: the target's default per kernel
            trials, per_task = 1 << 30, int(spec.tuning.get("trials_per_task", 64))
        options = {"max_trials_per_task": per_task, **measure, **(tune_options or {})}
        database, tune_summary = tuner.tune(fused, spec, target, config.tuning_db, trials,
                                            seed=config.seed, progress=not quiet,
                                            time_budget=config.time_budget, rpc=rpc,
                                            **options)
        if tune_summary.tasks:
            _log(f"qcompile: tuning database {config.tuning_db}: {tune_summary.already_tuned}/"
                 f"{tune_summary.tasks} tasks already tuned, {tune_summary.tuned_now} tuned now "
                 f"({tune_summary.trials} trials, {tune_summary.seconds:.0f}s)", quiet)
        if tune_summary.stopped_by == "interrupted":  # Ctrl-C: records saved, no build
            raise tuner.TuningInterrupted(tune_summary)
    elif config.rpc:
        raise QCompileError("--trials/--rpc need --tuning-db DIR")
    if tune_only:
        return BuildResult(None, {"tuning": tune_summary.to_dict() if tune_summary else None,
                                  "target": spec.to_dict()}, time.time() - t0)
    from .tuning import pretuned

    # the code runs on this CPU unless cross-built: take records measured on the closest one
    host_cpu = None if (config.cross or config.rpc) else pretuned.cpu_id()
    database, pretuned_desc = pretuned.combine(database, spec, enabled=config.pretuned,
                                               fused_mod=fused, target=target, cpu=host_cpu)
    if pretuned_desc.get("used"):
        match = f", {pretuned_desc['cpu_match']}" if "cpu_match" in pretuned_desc else ""
        _log(f"qcompile: pre-tuned database {pretuned_desc['path']} (measured on "
             f"{pretuned_desc.get('cpu', '?')}{match}): "
             f"{pretuned_desc.get('tasks_from_pretuned', '?')}/{pretuned_desc.get('tasks', '?')} "
             "kernels from it (--no-pretuned: off)", quiet)
    elif pretuned_desc.get("path"):  # a shipped database exists but was not applied
        _log(f"qcompile: pre-tuned database not used: {pretuned_desc.get('reason')}", quiet)
    executable = None
    codegen_stats: dict = {}
    if spec.family != "opencl":
        executable = codegen.compile_fused(fused, target, database=database,
                                           default_schedule=kernel_default,
                                           fallbacks=fallbacks, stats=codegen_stats)
    else:  # scheduled here, so template fallbacks are known before --strict and model.json
        from .gpu import artifact as gpu_artifact

        gpu_scheduled = gpu_artifact.schedule(fused, target, database=database,
                                              fallbacks=fallbacks)
    fallbacks.name_nodes(kernel_map, imported.node_names)
    if fallbacks:
        _log(f"qcompile: {len(fallbacks)} fallback(s), see model.json `fallbacks` / qcompile "
             "inspect: " + "; ".join(f.describe() for f in fallbacks[:3]), quiet)
        if config.strict:
            raise QCompileError(
                "--strict: the build fell back for " + "; ".join(
                    f.describe() for f in fallbacks)
                + ". Drop --strict to accept the slower kernels.")
    meta = {
        "runtime": "relax-vm" if executable is not None else "opencl",
        "model": {"source": str(imported.source), "nodes": len(imported.onnx_model.graph.node)},
        "inputs": [t.to_dict() for t in imported.inputs],
        "outputs": [t.to_dict() for t in imported.outputs],
        "target": {**spec.to_dict(), "tvm_target": str(target)},
        "versions": versions(),
        "config": to_dict(config),
        "tuning": tune_summary.to_dict() if tune_summary else None,
        "pretuned": pretuned_desc,
        "ops": table["ops"],
        "precision_summary": table["summary"],
        "notes": ctx.notes,
        "int8_kernels": int8_kernels,
        "fallbacks": fallbacks.to_list(),
        "kernels": _kernel_rows(fused, kernel_map, imported.node_names),
        # calls whose output overwrites a dead input (relay_passes/use_inplace_outputs.py)
        "inplace_calls": codegen_stats.get("inplace_calls", 0),
    }
    if executable is None:
        # OpenCL family: the wheel has no OpenCL runtime, so the artifact is the kernels,
        # their launch list and the weights, run by qcompile.gpu.runtime (docs/gpu.md)
        out, meta = gpu_artifact.write_scheduled(out_dir, gpu_scheduled, target, meta)
        _log(f"qcompile: {meta['opencl']['kernels']} OpenCL kernels, "
             f"{meta['opencl']['launches']} launches", quiet)
    else:
        out = artifact.write(out_dir, executable, meta)
    secs = time.time() - t0
    meta["build_seconds"] = secs
    _log(f"qcompile: wrote {out / (artifact.LIB_NAME if executable is not None else '')} "
         f"and {artifact.META_NAME} in {secs:.1f}s", quiet)
    return BuildResult(out, meta, secs)


def _summarize_dispatch(report: list) -> dict:
    """model.json `int8_kernels`: per integer op its kernel template and dot-product variant
    (vnni; widen/widen16: exact widened s16; fast: saturating vpmaddubsw pair, chosen only
    where the layer's weights provably cannot saturate), or why it was left alone."""
    by_variant: dict[str, int] = {}
    by_kernel: dict[str, int] = {}
    for e in report:
        if "left_alone" not in e:
            by_variant[e.get("variant") or "?"] = by_variant.get(e.get("variant") or "?", 0) + 1
            by_kernel[e.get("kernel") or "?"] = by_kernel.get(e.get("kernel") or "?", 0) + 1
    return {"by_variant": by_variant, "by_kernel": by_kernel, "ops": report}


def _dispatch_kernels(mod, spec, report: list | None = None, fallbacks=None,
                      winograd: bool = True):
    """Rewrite integer ops into the target's kernel templates; returns (mod, default-schedule
    function for those templates or None); `report` receives the dispatch entries (per
    integer op its kernel, or why it was left alone) of either family."""
    if spec.family == "opencl":  # template schedule failures: gpu.artifact.schedule
        from .gpu import schedules as gpu_schedules

        return gpu_schedules.dispatch(mod, spec, report=report), None
    from .schedules import dispatch_for

    return dispatch_for(mod, spec, report=report, fallbacks=fallbacks, winograd=winograd)


def _kernel_rows(fused, kernel_map, node_names) -> list[dict]:
    """One row per PrimFunc: the ONNX nodes it computes and the precision it runs in."""
    from tvm import tirx

    from . import codegen

    rows = []
    for gv, func in fused.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        dtypes = {str(p.dtype) for p in func.params if hasattr(p, "dtype")}
        rows.append({
            "function": gv.name_hint,
            "nodes": codegen.onnx_nodes(kernel_map.get(gv.name_hint, []), node_names),
            "precision": "int8" if dtypes & {"uint8", "int8"} else "f32",
            "param_dtypes": sorted(dtypes),
        })
    return rows
