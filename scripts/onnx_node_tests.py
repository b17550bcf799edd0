#!/usr/bin/env python3
"""ONNX's own node tests run through qcompile, for every op type qcompile claims to import.

    python scripts/onnx_node_tests.py [--jobs 2] [--only REGEX] [--json out.json]
        [--md out.md] [--check tests/data/onnx_node_expected_failures.txt] [--write-expected F]

The cases are the ones the `onnx` wheel generates (`onnx.backend.test.case.node`: a model of
one node, or its function expansion, with input and expected output arrays). A case is
*claimed* when every op in its graph is one `qcompile build` accepts (`qcompile.frontend.
supported_op_types()`: TVM's Relax importer plus qcompile's converters). Each claimed case is
built by `qcompile.build` for the host target (the whole pipeline, the x86 schedules
included) and run by `qcompile.load`; its outputs are compared with ONNX's expected ones at the
case's own rtol/atol (NaNs must match).

qcompile compiles for static shapes: a graph input that is an integer tensor (a Reshape's
shape, Slice's starts, TopK's k, Gather's indices) is first fed at run time, and only if the
build refuses that is it frozen into an initializer with the test's value; such a pass is
counted apart ("pass, int inputs constant").

Statuses: pass, pass-const, mismatch (built and ran, wrong numbers), error (a qcompile error:
clear message, no result), crash (anything else: a defect). With --check, the run fails when a
case outside the expected-failures file does not pass (a regression) or a listed case passes
(update the list: --write-expected). Every entry in that file carries its reason.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PASS = ("pass", "pass-const")


def claimed_cases(only: str | None = None):
    from onnx.backend.test.case import node
    from qcompile.frontend import supported_op_types

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    ops = supported_op_types()
    out = []
    for c in cases:
        if c.model is None or (only and not re.search(only, c.name)):
            continue
        types = {n.op_type for n in c.model.graph.node}
        if types <= ops:
            out.append(c)
    return out, len(cases)


def _tensor_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _freeze_int_inputs(model, feeds):
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    frozen = [vi.name for vi in _tensor_inputs(m)
              if isinstance(feeds.get(vi.name), np.ndarray) and feeds[vi.name].dtype.kind in "iub"]
    if not frozen:
        return None, []
    keep = [vi for vi in m.graph.input if vi.name not in frozen]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(feeds[n]), n) for n in frozen)
    return m, frozen


def _compare(got, want, rtol, atol):
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype == object or got.dtype == object:
        return "object outputs"
    if got.shape != want.shape:
        return f"shape {got.shape} != expected {want.shape}"
    if want.dtype.kind == "b" or want.dtype.kind in "iu":
        if not np.array_equal(got.astype(want.dtype), want):
            return f"{int((got.astype(want.dtype) != want).sum())} of {want.size} values differ"
        return None
    g, w = got.astype(np.float64), want.astype(np.float64)
    nan = np.isnan(w)
    if not np.array_equal(np.isnan(g), nan):
        return "NaN positions differ"
    ok = np.isclose(g[~nan], w[~nan], rtol=rtol, atol=atol, equal_nan=True)
    if not ok.all():
        err = np.abs(g[~nan] - w[~nan])
        return f"{int((~ok).sum())} of {w.size} values off, max |diff| {float(err.max()):.3g}"
    return None


def _build_and_run(model, data_sets, rtol, atol, workdir):
    import qcompile

    qcompile.build(model, workdir, target="host", quiet=True)
    cm = qcompile.load(workdir)
    feed_names = [vi.name for vi in _tensor_inputs(model)]
    for inputs, outputs in data_sets:
        got = list(cm(dict(zip(feed_names, inputs))).values())
        if len(got) != len(outputs):
            return f"{len(got)} outputs, expected {len(outputs)}"
        for i, (g, w) in enumerate(zip(got, outputs)):
            why = _compare(g, w, rtol, atol)
            if why:
                return f"output {i}: {why}"
    return None


def run_case(case) -> dict:
    from qcompile.errors import QCompileError

    t0 = time.time()
    res = {"name": case.name, "ops": sorted({n.op_type for n in case.model.graph.node})}
    rtol, atol = float(case.rtol), float(case.atol)
    with tempfile.TemporaryDirectory(prefix="qc-node-") as tmp, \
            warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        status, why = "pass", None
        try:
            try:
                why = _build_and_run(case.model, case.data_sets, rtol, atol, Path(tmp) / "a")
            except QCompileError as err:
                feeds = dict(zip([vi.name for vi in _tensor_inputs(case.model)],
                                 case.data_sets[0][0]))
                frozen, names = _freeze_int_inputs(case.model, feeds)
                if frozen is None or len(case.data_sets) != 1:
                    raise
                try:
                    data = [([x for n, x in zip(feeds, case.data_sets[0][0]) if n not in names],
                             case.data_sets[0][1])]
                    why = _build_and_run(frozen, data, rtol, atol, Path(tmp) / "b")
                    status = "pass-const"
                    res["frozen_inputs"] = names
                except QCompileError as err2:
                    raise type(err2)(f"{_short(str(err))}; with the int inputs {names} "
                                     f"constant: {_short(str(err2))}") from None
            if why:
                status = "mismatch"
        except QCompileError as err:
            status, why = "error", f"{type(err).__name__}: {_short(str(err))}"
        except Exception as err:  # noqa: BLE001 - a crash is exactly what this script reports
            status = "crash"
            why = f"{type(err).__name__}: {_short(str(err))}"
            res["traceback"] = traceback.format_exc()[-2000:]
    res.update(status=status, seconds=round(time.time() - t0, 2))
    if status not in PASS:
        res["reason"] = why
    return res


def _short(msg: str) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    msg = lines[-1] if lines else ""
    return re.sub(r"/tmp/qc-node-\w+/", "", msg)[:300]


_CASES = None


def _init_worker(only):
    global _CASES
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    _CASES, _ = claimed_cases(only)


def _run_index(i):
    return run_case(_CASES[i])


def read_expected(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(":")
        out[name.strip()] = reason.strip()
    return out


def write_expected(path: Path, results: list[dict]) -> None:
    bad = sorted((r for r in results if r["status"] not in PASS), key=lambda r: r["name"])
    lines = ["# ONNX node tests qcompile claims (all ops importable) but does not pass, with",
             "# the reason each fails. Written by scripts/onnx_node_tests.py --write-expected;",
             "# CI (tests/test_onnx_node_tests.py) fails on any other failure and on a listed",
             "# case that passes. Generated with onnx " + _onnx_version() + " (its node tests), "
             "TVM " + _tvm_version() + ".", ""]
    lines += [f"{r['name']}: [{r['status']}] {r['reason']}" for r in bad]
    path.write_text("\n".join(lines) + "\n")


def _onnx_version() -> str:
    import onnx
    return onnx.__version__


def _tvm_version() -> str:
    import tvm
    return tvm.__version__


def summarize(results: list[dict], total_cases: int) -> dict:
    from collections import Counter

    by = Counter(r["status"] for r in results)
    n = len(results)
    passed = by["pass"] + by["pass-const"]
    ops_all = sorted({o for r in results for o in r["ops"]})
    ops_clean = [o for o in ops_all
                 if all(r["status"] in PASS for r in results if o in r["ops"])]
    return {"cases_in_onnx": total_cases, "claimed_cases": n, "passed": passed,
            "pass_rate": round(passed / n, 4) if n else 0.0, "by_status": dict(by),
            "ops": len(ops_all), "ops_all_cases_pass": len(ops_clean)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", help="regex over case names")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--check", help="expected-failures file: fail on any other failure")
    p.add_argument("--write-expected", help="write the failures as the expected-failures file")
    args = p.parse_args(argv)

    cases, total = claimed_cases(args.only)
    print(f"onnx node tests: {total} cases, {len(cases)} with every op claimed by qcompile",
          flush=True)
    t0 = time.time()
    results = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(args.only,),
                  maxtasksperchild=50) as pool:
        for i, r in enumerate(pool.imap_unordered(_run_index, range(len(cases)))):
            results.append(r)
            if r["status"] not in PASS:
                print(f"  {r['status']:8s} {r['name']}: {r.get('reason', '')[:160]}", flush=True)
            if (i + 1) % 100 == 0:
                print(f"  ... {i + 1}/{len(cases)} in {time.time() - t0:.0f}s", flush=True)
    results.sort(key=lambda r: r["name"])
    summary = summarize(results, total)
    summary["seconds"] = round(time.time() - t0, 1)
    print(f"pass rate {summary['passed']}/{summary['claimed_cases']} = "
          f"{100 * summary['pass_rate']:.1f}% ({summary['by_status']}); ops {summary['ops']}, "
          f"{summary['ops_all_cases_pass']} with every case passing; {summary['seconds']}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "results": results},
                                              indent=1))
    if args.md:
        _write_md(Path(args.md), summary, results)
    if args.write_expected:
        write_expected(Path(args.write_expected), results)
    if args.check:
        expected = read_expected(Path(args.check))
        if args.only:
            expected = {k: v for k, v in expected.items() if re.search(args.only, k)}
        names = {r["name"] for r in results}
        new_fail = [r for r in results if r["status"] not in PASS and r["name"] not in expected]
        fixed = [r["name"] for r in results if r["status"] in PASS and r["name"] in expected]
        crashes = [r for r in results if r["status"] == "crash"]
        gone = sorted(set(expected) - names)
        for r in new_fail:
            print(f"REGRESSION {r['name']}: [{r['status']}] {r.get('reason')}")
        for n in fixed:
            print(f"NOW PASSES {n}: remove it from {args.check}")
        for n in gone:
            print(f"NOT CLAIMED ANY MORE {n}: remove it from {args.check}")
        if new_fail or fixed or gone:
            return 1
        print(f"check: every failure is listed in {args.check} ({len(expected)} entries, "
              f"{len(crashes)} of them crashes)")
    return 0


def _write_md(path: Path, summary: dict, results: list[dict]) -> None:
    from collections import defaultdict

    per_op = defaultdict(lambda: [0, 0])
    for r in results:
        for o in r["ops"]:
            per_op[o][1] += 1
            per_op[o][0] += r["status"] in PASS
    rows = [f"| {o} | {p}/{n} |" for o, (p, n) in sorted(per_op.items()) if p < n]
    path.write_text(
        f"ONNX node tests through qcompile: {summary['passed']}/{summary['claimed_cases']} "
        f"claimed cases pass ({100 * summary['pass_rate']:.1f}%), {summary['by_status']}.\n\n"
        "Ops with a failing case:\n\n| op | passed |\n|---|---|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
