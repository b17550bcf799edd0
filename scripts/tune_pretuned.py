#!/usr/bin/env python3
"""Produce (or check) the pre-tuned database shipped for a target: qcompile/pretuned/<target>/.

Run it ON a machine of the target (or with --rpc through one): every record in a shipped
database is a real measurement. Steps:

  1. models: the int8 benchmark models, ONNX Runtime QDQ (scripts/make_lpt_models.py --tools
     ort) of ../shared/bench/make_models.py: resnet50, mobilenetv2, bert_block. --models DIR
     must hold <name>_ort.onnx (or pass --make-models to create them there).
  2. tune: `qcompile tune` of each model into a work database (--work-db, resumable: rerun
     the same command after an interruption), --trials-per-task per kernel, at most
     --time-budget per model.
  3. export: the fastest record of every kernel of the tuned models, merged with what the
     shipped database already holds, written to qcompile/pretuned/<target>/ (atomically) with
     qcompile-pretuned.json: models, trials, tuning time, CPU, versions.

  python scripts/tune_pretuned.py --target avx2 --models /tmp/models --work-db /tmp/work-avx2 \\
      --only resnet50 --trials-per-task 16 --time-budget 45m
  python scripts/tune_pretuned.py --target avx512-vnni ... --missing-only  # new kernels only
  python scripts/tune_pretuned.py --target avx512-vnni --rpc HOST:9190 --key vnni ...  # via RPC
  python scripts/tune_pretuned.py --target avx2 --models /tmp/models --check  # coverage only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet50", "mobilenetv2", "bert_block"]
SHARED_BENCH = ROOT.parent / "shared" / "bench" / "make_models.py"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


MODEL_SUFFIX = "_ort"   # --model-suffix: <name><suffix>.onnx in --models


def model_path(models: Path, name: str) -> Path:
    return models / f"{name}{MODEL_SUFFIX}.onnx"


def make_models(models: Path, names: list[str]) -> None:
    models.mkdir(parents=True, exist_ok=True)
    if not all((models / f"{n}.onnx").exists() for n in names):
        subprocess.run([sys.executable, str(SHARED_BENCH), str(models)], check=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_lpt_models.py"), "--models",
                    str(models), "--out", str(models), "--only", ",".join(names), "--tools",
                    "ort"], check=True)


def tune_model(model: Path, args, tasks_out: list, trials: int = -1) -> dict:
    """Tune `model` into the work database (trials=0: only extract its tasks)."""
    from qcompile.build import BuildConfig, build
    from qcompile.tuning import tuner

    cfg = BuildConfig(target=args.target, trials=trials, tuning_db=str(args.work_db),
                      time_budget=args.time_budget, rpc=args.rpc, key=args.key, seed=args.seed,
                      pretuned=False, cross=bool(args.rpc) and trials == 0)
    t0 = time.time()
    options = {"max_trials_per_task": args.trials_per_task, "tasks_out": tasks_out}
    if args.missing_only:
        options["skip_task"] = shipped_coverage(args.target)
    res = build(str(model), cfg, None, tune_only=True, tune_options=options)
    summary = res.meta["tuning"]
    if trials:
        print(tuner.TuneSummary(**summary).table(), flush=True)
    return {"tuning_seconds": round(time.time() - t0, 1), "trials": summary["trials"],
            "stopped_by": summary["stopped_by"], "tasks": summary["tasks"]}


def shipped_coverage(target: str):
    """A `skip_task` for the tuner: kernels the shipped database already holds a valid
    record for are not tuned again (--missing-only: after a change of some kernels' PrimFuncs,
    only those are measured; export still keeps the faster of old and new records)."""
    from qcompile import targets
    from qcompile.tuning import database as dbm, pretuned

    dest = export_dir(target)
    spec = targets.resolve(target, cross=True)
    shipped = pretuned.open_pretuned(spec, path=dest)[0] if (dest / "qcompile-tuning.json"
                                                              ).is_file() else None
    if shipped is None:
        return None

    def skip(mod):
        wl = dbm.task_workload(shipped, mod)
        return "in the shipped database" if wl is not None and shipped.get_top_k(wl, 1) \
            else None

    return skip


CPU_VARIANT = False   # --cpu-variant: export to <target>@<cpu key>/ (this CPU's records only)


def export_dir(target: str) -> Path:
    from qcompile.tuning import pretuned

    if CPU_VARIANT:
        cid = pretuned.cpu_id()
        if cid is None:
            sys.exit("--cpu-variant: cannot read this CPU's vendor/family/model")
        return pretuned.root() / f"{target}{pretuned.CPU_SEP}{pretuned.cpu_key(cid)}"
    return pretuned.root() / target


def export(args, names: list[str], runs: dict, tasks: list) -> Path:
    """Best record per kernel of the models -> qcompile/pretuned/<target>/ (merged, atomic)."""
    from tvm.s_tir import meta_schedule as ms

    from qcompile import targets
    from qcompile.tuning import database as dbm, pretuned

    spec = targets.resolve(args.target, cross=True)
    work = dbm.open_database(args.work_db, spec, create=False, writable=False).db
    dest = export_dir(spec.name)
    sources = [work]
    old_info = {}
    if (dest / dbm.HEADER).is_file():   # merged only with records of the same directory
        old, _ = pretuned.open_pretuned(spec, path=dest)
        if old is not None:
            sources.append(old)
            old_info = pretuned.info(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=dest.parent))
    dbm.write_json_atomic(tmp / dbm.HEADER, {"qcompile_db_version": dbm.DB_VERSION,
                                             **dbm.identity(spec)})
    out = ms.database.JSONDatabase(str(tmp / dbm.WORKLOADS), str(tmp / dbm.RECORDS),
                                   allow_missing=True, module_equality="structural")
    # every kernel of the models (tasks) and those the shipped database already holds; the
    # fastest valid record of each in the work or the shipped database
    mods = [t.dispatched[0] for t in tasks]
    for src0 in sources[1:]:
        mods += [r.workload.mod for r in src0.get_all_tuning_records()]
    seen, kernels = set(), 0
    for mod in mods:
        key = dbm.module_key(mod)
        if key in seen:
            continue
        seen.add(key)
        best = None
        for src in sources:
            wl = dbm.task_workload(src, mod)
            top = src.get_top_k(wl, 1) if wl is not None else []
            if top:
                mean = sum(float(s) for s in top[0].run_secs) / len(top[0].run_secs)
                if best is None or mean < best[0]:
                    best = (mean, top[0])
        if best is None:
            continue
        rec = best[1]
        # the record's own workload: its trace names that module's blocks (tuner.py)
        wl = out.commit_workload(rec.workload.mod)
        out.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs,
                                                          rec.target, rec.args_info))
        kernels += 1
    models_info = dict(old_info.get("models", {}))
    for name in names:
        models_info[name] = {**models_info.get(name, {}), **runs.get(name, {}),
                             "file": f"{name}{MODEL_SUFFIX}.onnx"
                             + (f" ({args.model_note})" if args.model_note else
                                " (scripts/make_lpt_models.py --tools ort)")}
    cpu = cpu_name()
    if args.rpc:
        from qcompile.tuning import rpc as rpcm

        probe = rpcm.probe_server(rpcm.RPCSettings.from_flags(args.rpc, args.key)) or {}
        cpu = probe.get("cpu_model") or f"RPC key {args.key}"
    info = {"target": spec.name, "cpu": cpu, "kernels": kernels, "models": models_info,
            "trials_per_task": args.trials_per_task,
            "date": datetime.date.today().isoformat(),
            "measured": "rpc " + args.rpc if args.rpc else "locally",
            # the target's required CPU flags as the measuring machine reported them (local
            # runs): proof the records were measured where the target's code runs
            **({} if args.rpc else {"cpu_flags": sorted(
                set(spec.required_flags) - set(spec.missing_flags())),
                "cpu_id": pretuned.cpu_id()}),
            "note": "fastest measured record per kernel; produced by scripts/tune_pretuned.py"
                    + (f"; {args.note}" if args.note else "")}
    from qcompile.util import versions

    info["versions"] = versions()
    dbm.write_json_atomic(tmp / pretuned.INFO, info)
    del out
    import gzip

    for name in (dbm.WORKLOADS, dbm.RECORDS):  # shipped compressed (dbm.shipped_files)
        with open(tmp / name, "rb") as src, gzip.GzipFile(tmp / (name + ".gz"), "wb",
                                                          mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        (tmp / name).unlink()
    if dest.exists():
        backup = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        for extra in dest.iterdir():  # keep files that are not part of the database
            if extra.is_file() and not extra.name.startswith(".") and extra.name not in (
                    dbm.HEADER, dbm.WORKLOADS, dbm.RECORDS, dbm.WORKLOADS + ".gz",
                    dbm.RECORDS + ".gz", pretuned.INFO) \
                    and not (tmp / extra.name).exists():
                shutil.copy(extra, tmp / extra.name)
        os.replace(dest, backup)
        os.replace(tmp, dest)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    os.chmod(dest, 0o755)
    print(f"exported {kernels} kernels to {dest}")
    return dest


def check(args, names: list[str]) -> int:
    """Build each model with the shipped database (no tuning) and report its coverage."""
    from qcompile.build import BuildConfig, build

    for name in names:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            res = build(str(model_path(args.models, name)), BuildConfig(target=args.target,
                                                                         cross=not CPU_VARIANT), out,
                        quiet=True)
            p = res.meta["pretuned"]
            print(f"{name}: {p.get('tasks_from_pretuned', 0)}/{p.get('tasks', '?')} kernels from "
                  f"{p.get('path', p.get('reason'))}; build {time.time() - t0:.1f}s", flush=True)
    return 0


def main(argv=None) -> int:
    from qcompile.config import parse_duration

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--models", type=Path, required=True, help="directory of <name>_ort.onnx")
    p.add_argument("--only", default=",".join(MODELS))
    p.add_argument("--model-suffix", default="_ort", help="models are <name><suffix>.onnx "
                   "(default _ort: ONNX Runtime QDQ; e.g. _q7 for `qcompile quantize` output)")
    p.add_argument("--model-note", default="", help="how the models were made (recorded)")
    p.add_argument("--make-models", action="store_true", help="create the models first")
    p.add_argument("--work-db", type=Path, help="tuning database to tune into (resumable)")
    p.add_argument("--trials-per-task", type=int, default=16)
    p.add_argument("--time-budget", type=parse_duration, default=None, help="per model")
    p.add_argument("--rpc", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--missing-only", action="store_true", help="tune only the kernels the "
                   "shipped database has no record for")
    p.add_argument("--export-only", action="store_true", help="no tuning: export what the "
                   "work database holds for the models")
    p.add_argument("--check", action="store_true", help="only report coverage")
    p.add_argument("--note", default="", help="added to qcompile-pretuned.json")
    p.add_argument("--cpu-variant", action="store_true", help="export to qcompile/pretuned/"
                   "<target>@<vendor>-<family>-<model>/ (builds on a CPU of that model prefer "
                   "it), merged only with what that directory holds")
    args = p.parse_args(argv)
    global MODEL_SUFFIX, CPU_VARIANT
    MODEL_SUFFIX = args.model_suffix
    CPU_VARIANT = args.cpu_variant
    names = [n for n in args.only.split(",") if n]
    if args.make_models:
        make_models(args.models, names)
    if args.check:
        return check(args, names)
    if args.work_db is None:
        p.error("--work-db is required to tune")
    runs, tasks = {}, []
    from qcompile.tuning.tuner import TuningInterrupted

    for name in names:
        print(f"== {name}", flush=True)
        try:
            runs[name] = tune_model(model_path(args.models, name), args, tasks,
                                    trials=0 if args.export_only else -1)
        except TuningInterrupted:
            print(f"interrupted; the work database {args.work_db} is valid: rerun the same "
                  "command to resume", file=sys.stderr)
            return 130
        if args.export_only:
            runs[name] = {}
    if not args.no_export:
        export(args, names, runs, tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
