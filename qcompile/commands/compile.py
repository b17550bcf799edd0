"""`qcompile compile MODEL.onnx --data DATA -o DIR`: fp32 ONNX in, checked int8 build out.

One command for the whole flow: post-training quantization (`qcompile quantize`, FakeQuantize
written to DIR/model_int8.onnx), the build (`qcompile build`, with tuning when --trials or
--time-budget is given) and an accuracy gate that runs the *compiled* int8 module next to the
fp32 model (ONNX Runtime) on samples the calibration never saw:

  * with `--metric MODULE:FUNCTION`: the metric's drop (`--drop-type`) must be <= --max-drop
    (the PTQ itself then runs in accuracy-aware mode with the same metric and bound);
  * without: the mean output SQNR vs fp32 must be >= --min-sqnr dB (top-1 agreement of the
    last axis is reported next to it).

Gate samples: the first --holdout samples of --val-data when given, otherwise the last
--holdout samples of --data, which are then left out of calibration. The gate's result is
written into DIR/model.json under "compile" (with the quantization summary), so the artifact
says how it was checked.

Exit status: 0 when the gate passed; 1 when it did not (the build is still written, with
"passed": false); 2 on bad input (QCompileError).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .. import artifact
from ..build import BuildConfig, build
from ..config import add_arguments as add_config_arguments, flag, from_args, to_dict
from ..errors import QCompileError

QUANTIZED_NAME = "model_int8.onnx"


@dataclasses.dataclass
class CompileConfig:
    """The accuracy gate of `qcompile compile` (quantization and build flags are their own)."""
    holdout: int = flag(32, help="samples held back from --data for the accuracy gate when "
                        "no --val-data is given (default 32; at most half of --data)")
    min_sqnr: float = flag(20.0, help="gate without --metric: least mean output SQNR (dB) of "
                           "the compiled int8 module vs the fp32 model (default 20)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..quantization.config import QuantizeConfig
    from ..quantization.datasets import DatasetConfig

    p.add_argument("model", metavar="MODEL.onnx", help="fp32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="build directory to write")
    add_config_arguments(p, BuildConfig)
    # --target, --input-shape and --input-value serve both the PTQ and the build (same dest);
    # the output format of the intermediate model is always FakeQuantize
    add_config_arguments(p, QuantizeConfig,
                         skip=("target", "input_shapes", "input_values", "format"))
    add_config_arguments(p, DatasetConfig)
    add_config_arguments(p, CompileConfig)
    p.add_argument("--quiet", action="store_true", help="print only the summary and errors")


def _log(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return log


def _split(samples: list, holdout: int, has_val: bool) -> tuple[list, int]:
    """(calibration samples, number held back for the gate)."""
    if has_val:
        return samples, 0
    if holdout <= 0:
        raise QCompileError(f"--holdout {holdout} must be positive without --val-data: the gate "
                            "needs samples the calibration did not see")
    if len(samples) < 2:
        raise QCompileError(f"--data holds {len(samples)} sample(s); qcompile compile needs at "
                            "least 2 (calibration + accuracy gate), or pass --val-data")
    h = min(holdout, len(samples) // 2)
    return samples[:-h], h


def run(args: argparse.Namespace) -> int:
    from ..quantization import accuracy_aware, metrics
    from ..frontend.control_flow import apply_input_flags
    from ..quantization.api import quantize_detailed, save
    from ..quantization.config import QuantizeConfig
    from ..quantization.datasets import DatasetConfig, make_dataset, take
    from ..quantization.graph import load_model
    from ..quantization.report import summary
    from ..runtime import load

    bcfg = from_args(BuildConfig, args)
    qcfg = from_args(QuantizeConfig, args, format="fq")
    dcfg = from_args(DatasetConfig, args)
    ccfg = from_args(CompileConfig, args)
    log = _log(args.quiet)
    if not dcfg.data:
        raise QCompileError("qcompile compile needs calibration data: --data FILE_OR_FOLDER "
                            "(.npy, .npz, a folder of .npy/.npz files or images)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    fp32 = apply_input_flags(load_model(args.model), qcfg.input_shapes, qcfg.input_values,
                             str(args.model), require_static=False)
    has_val = bool(qcfg.val_data)
    pool = list(take(make_dataset(dcfg.data, fp32, dcfg),
                     qcfg.subset_size + (0 if has_val else ccfg.holdout)))
    calib, held = _split(pool, ccfg.holdout, has_val)
    if has_val:
        gate = list(take(make_dataset(qcfg.val_data, fp32, dcfg), ccfg.holdout))
        if not gate:
            raise QCompileError(f"--val-data {qcfg.val_data} holds no samples")
        where = f"the first {len(gate)} samples of --val-data"
    else:
        gate = pool[-held:]
        where = f"the last {held} samples of --data (not used for calibration)"
    log(f"qcompile compile: calibrating on {len(calib)} samples; accuracy gate on {where}")

    # 1. post-training quantization (accuracy-aware when --metric is given)
    result = quantize_detailed(fp32, calib, config=qcfg, dataset_config=dcfg, log=log)
    qpath = out / QUANTIZED_NAME
    save(result.model(), qpath)
    log(summary(result.report))
    t_quant = time.time() - t0

    # 2. build (tuning when asked: a time budget alone means "tune until it is spent")
    if bcfg.time_budget and bcfg.trials == 0:
        bcfg = dataclasses.replace(bcfg, trials=-1)
    if bcfg.trials != 0 and not bcfg.tuning_db:
        bcfg = dataclasses.replace(bcfg, tuning_db=str(out / "tuning"))
    # the quantized model has the --input-value inputs as constants already (or folded away)
    res = build(str(qpath), dataclasses.replace(bcfg, input_values={}), out, quiet=args.quiet)

    # 3. accuracy gate: the compiled module vs fp32 on held-back samples
    t1 = time.time()
    names = [o.name for o in fp32.graph.output]
    ref_predict = accuracy_aware._predictor(fp32, qcfg.threads or None)
    compiled = load(out)

    def int8_predict(sample):
        got = compiled(sample)
        return [got[n] for n in names]

    refs = [ref_predict(s) for s in gate]
    outs = [int8_predict(s) for s in gate]
    sqnr = metrics.output_agreement(lambda s, it=iter(outs): next(it), gate, refs)
    top1 = metrics.top1_agreement([r[0] for r in refs], [o[0] for o in outs])
    gate_rep: dict = {"samples": len(gate), "source": where, "sqnr_db": round(sqnr, 3),
                      "top1_agreement": top1}
    if qcfg.metric:
        fn = metrics.load_metric(qcfg.metric)
        m_fp, m_q = float(fn(ref_predict, gate)), float(fn(int8_predict, gate))
        drop = accuracy_aware._drop(m_fp, m_q, qcfg.drop_type)
        passed = drop <= qcfg.max_drop
        gate_rep.update(kind="metric", metric=qcfg.metric, metric_fp32=m_fp, metric_int8=m_q,
                        drop=drop, drop_type=qcfg.drop_type, max_drop=qcfg.max_drop)
        verdict = (f"metric {qcfg.metric}: fp32 {m_fp:.4g}, int8 {m_q:.4g}, {qcfg.drop_type} "
                   f"drop {drop:.4g} (--max-drop {qcfg.max_drop:g})")
    else:
        passed = sqnr >= ccfg.min_sqnr
        gate_rep.update(kind="sqnr", min_sqnr_db=ccfg.min_sqnr)
        verdict = f"mean output SQNR {sqnr:.1f} dB (--min-sqnr {ccfg.min_sqnr:g})"
    gate_rep["passed"] = bool(passed)

    meta = artifact.read_meta(out)
    aa = result.report.get("accuracy_aware")
    meta["compile"] = {
        "config": to_dict(ccfg), "quantize_config": to_dict(qcfg),
        "calibration_samples": len(calib),
        "quantized_ops": result.report["quantized_ops"]["count"],
        "reverted_to_fp32": list(aa["reverted"]) if aa else [],
        "gate": gate_rep,
        "seconds": {"quantize": round(t_quant, 2), "build": round(res.seconds, 2),
                    "gate": round(time.time() - t1, 2)}}
    meta["files"]["quantized_model"] = QUANTIZED_NAME
    artifact.seal(out, meta)

    print(res.meta["precision_summary"])
    print(f"accuracy gate on {len(gate)} held-back samples: {verdict}; top-1 agreement "
          f"{top1:.3f} -> {'passed' if passed else 'FAILED'}")
    print(f"wrote {out}/ ({QUANTIZED_NAME}, model.so, model.json) in {time.time() - t0:.1f}s")
    if not passed:
        print("qcompile compile: the int8 build misses the accuracy gate; try --preset mixed, "
              "--activation-stat percentile, more --subset-size, --metric with --max-drop "
              "(reverts the most sensitive layers to fp32), or --ignore-name NODE "
              "(see `qcompile debug`)", file=sys.stderr)
        return 1
    return 0
