"""Data for the PTQ comparisons and tests: the real PP-OCR text-direction classifier (from the
PyPI wheel `rapidocr-onnxruntime==1.4.4`), rendered text-line images in both orientations with
PaddleOCR's preprocessing, and seeded synthetic inputs for the random-weight benchmark models.

The wheel is downloaded once with `pip download` and the .onnx cached in $QCOMPILE_CACHE (or
~/.cache/qcompile). No network: a RuntimeError saying so (tests fail, they do not skip).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_CLS_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
PPOCR_CLS_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
CLS_SHAPE = (3, 48, 192)          # PaddleOCR cls_image_shape
CLS_LABELS = ("0", "180")


def cache_dir() -> Path:
    d = Path(os.environ.get("QCOMPILE_CACHE") or Path.home() / ".cache" / "qcompile")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fetch_ppocr_cls() -> Path:
    """Path of ch_ppocr_mobile_v2.0_cls_infer.onnx, downloading the wheel on first use."""
    dest = cache_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if dest.is_file() and _sha256(dest) == PPOCR_CLS_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               PPOCR_WHEEL, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {PPOCR_WHEEL} from PyPI (needed for the real PP-OCR "
                f"classifier; cached afterwards in {cache_dir()}):\n  {' '.join(cmd)}\n"
                f"  -> exit {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}\n"
                "Check network access to PyPI, or put the .onnx at "
                f"{dest} (sha256 {PPOCR_CLS_SHA256}).")
        with zipfile.ZipFile(wheels[0]) as z:
            dest.write_bytes(z.read(PPOCR_CLS_MEMBER))
    if _sha256(dest) != PPOCR_CLS_SHA256:
        raise RuntimeError(f"{dest}: unexpected sha256 {_sha256(dest)} (wheel changed?)")
    return dest


# ---- text lines ------------------------------------------------------------------------------

_WORDS = ("the quick brown fox jumps over lazy dog invoice total amount date number account "
          "payment order customer address street city phone email price quantity tax receipt "
          "model version station report quantized integer network layer output window "
          "Monday October Hello World OpenVINO compiler Shanghai Beijing Road Avenue").split()


def render_line(rng: np.random.Generator, font_size: int | None = None):
    """One synthetic text-line image (PIL RGB), dark text on a light background."""
    from PIL import Image, ImageDraw, ImageFont

    n = int(rng.integers(2, 6))
    words = [str(rng.choice(_WORDS)) for _ in range(n)]
    if rng.random() < 0.4:
        words.insert(int(rng.integers(0, n)), str(int(rng.integers(1, 99999))))
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text.upper()
    size = font_size or int(rng.integers(18, 40))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 10))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=fg, font=font)
    arr = np.asarray(img, np.float32)
    arr = arr + rng.normal(0, float(rng.uniform(0, 8)), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def cls_preprocess(img) -> np.ndarray:
    """PaddleOCR's cls resize_norm_img: height 48, keep ratio (width <= 192), (x/255-0.5)/0.5,
    zero-pad on the right. Returns [1, 3, 48, 192] float32."""
    from PIL import Image

    c, h, w = CLS_SHAPE
    ratio = img.width / img.height
    rw = min(w, int(np.ceil(h * ratio)))
    x = np.asarray(img.convert("RGB").resize((rw, h), Image.BILINEAR), np.float32)
    x = x[:, :, ::-1].transpose(2, 0, 1) / 255.0       # BGR like cv2
    x = (x - 0.5) / 0.5
    out = np.zeros((c, h, w), np.float32)
    out[:, :, :rw] = x
    return out[None]


def text_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n preprocessed lines, half upright (label 0) and half rotated by 180 (label 1),
    interleaved. Returns (x [n, 1, 3, 48, 192], labels [n])."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        img = render_line(rng)
        flip = i % 2 == 1
        if flip:
            img = img.rotate(180)
        xs.append(cls_preprocess(img))
        ys.append(int(flip))
    return np.stack(xs), np.array(ys)


# ---- synthetic inputs for the random-weight benchmark models --------------------------------

def synthetic_inputs(model_path: str | Path, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """n seeded N(0, 1) feeds matching the model's (static) input shapes."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(seed)
    specs = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
        specs.append((i.name, dims))
    return [{name: rng.standard_normal(dims).astype(np.float32) for name, dims in specs}
            for _ in range(n)]
