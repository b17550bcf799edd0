#!/usr/bin/env python3
"""Quantize the benchmark models (../shared/bench/make_models.py) with ONNX Runtime and NNCF.

    python scripts/make_lpt_models.py [--models DIR] [--out DIR] [--only resnet50,...]
                                      [--tools ort,nncf] [--samples N]

For each of resnet50 / mobilenetv2 / bert_block:
  OUT/<model>_ort.onnx   onnxruntime.quantization.quantize_static: QDQ, per-channel weights,
                         activations and weights QInt8 (ORT's defaults), MinMax calibration
  OUT/<model>_nncf.onnx  nncf.quantize on the ONNX model (NNCF's ONNX backend writes
                         QuantizeLinear/DequantizeLinear; `model_type=TRANSFORMER` for BERT)
Calibration: N seeded standard-normal inputs (the models have seeded random weights).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx

MODELS = {"resnet50": ("input", (1, 3, 224, 224)),
          "mobilenetv2": ("input", (1, 3, 224, 224)),
          "bert_block": ("hidden", (1, 128, 768))}


def calib(name: str, n: int, seed: int = 123):
    inp, shape = MODELS[name]
    rng = np.random.default_rng(seed)
    return [{inp: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def quantize_ort(src: str, dst: str, name: str, n: int) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib(name, n))

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def quantize_nncf(src: str, dst: str, name: str, n: int) -> None:
    import nncf

    model = onnx.load(src)
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if name.startswith("bert") else {}
    q = nncf.quantize(model, nncf.Dataset(calib(name, n)), subset_size=n, **kw)
    onnx.save(q, dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="/work/models")
    ap.add_argument("--out", default="/work/lpt_models")
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--tools", default="ort,nncf")
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in args.only.split(","):
        src = os.path.join(args.models, name + ".onnx")
        for tool in args.tools.split(","):
            dst = os.path.join(args.out, f"{name}_{tool}.onnx")
            t0 = time.time()
            {"ort": quantize_ort, "nncf": quantize_nncf}[tool](src, dst, name, args.samples)
            m = onnx.load(dst, load_external_data=False)
            ops = {}
            for node in m.graph.node:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            print(f"{dst}: {time.time() - t0:.0f}s, ops {ops}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
