"""Calibration / validation data: files, folders or any Python iterable -> model feeds.

Accepted sources (`--data`, or the `dataset` argument of `quantize()`):
  * `X.npy`  one array for a single-input model: shape [N, *input] (N samples, split along
    axis 0 into the model's batch size), [N, 1, ...] or one sample without the batch axis;
  * `X.npz`  arrays named after the model inputs (each split like a .npy), or one array for a
    single-input model;
  * a folder of `.npy` / `.npz` files (one sample each) or of images (`.png .jpg .jpeg .bmp
    .ppm .tif`) read with Pillow, resized and normalised by the `--image-*` options;
  * any Python iterable (list, generator, `torch` DataLoader, `nncf.Dataset`) whose items are a
    dict {input name: array}, an array (single input) or a tuple (positional inputs); an
    optional `transform` maps each item first (like `nncf.Dataset(data, transform_fn)`).
Every sample becomes {input name: array with the batch axis, in the input's dtype}.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from onnx import ModelProto

from ..config import flag
from ..errors import QuantizationError
from .runner import input_specs, np_dtype

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    import argparse
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--image-size expects H,W (e.g. 224,224), got {text!r}")
    return int(parts[0]), int(parts[1])


@dataclasses.dataclass
class DatasetConfig:
    """How files and folders become model inputs (flags shared by quantize and debug)."""
    data: str | None = flag(None, help="calibration data: .npy/.npz file, or a folder of "
                            ".npy/.npz files or images", metavar="DATA")
    input_name: str | None = flag(None, help="model input that a single-array .npy or the images "
                                  "feed (default: the only input)")
    image_size: tuple[int, int] | None = flag(
        None, parse=_size, metavar="H,W",
        help="resize images to H,W (default: the model input's static size)")
    image_resize: str = flag("stretch", choices=["stretch", "keep-ratio-pad"],
                             help="stretch to H,W, or keep the aspect ratio, fit the height "
                                  "and zero-pad on the right (text-line models)")
    image_scale: float = flag(255.0, help="pixels are divided by this first")
    image_mean: tuple[float, ...] = flag((0.0,), parse=_floats, metavar="M[,M,M]",
                                         help="subtracted per channel after scaling")
    image_std: tuple[float, ...] = flag((1.0,), parse=_floats, metavar="S[,S,S]",
                                        help="divided per channel after the mean")
    image_layout: str = flag("NCHW", choices=["NCHW", "NHWC"], help="image input layout")
    image_color: str = flag("RGB", choices=["RGB", "BGR", "GRAY"], help="channel order")


class Dataset:
    """An iterable of model feeds with an optional known length."""

    def __init__(self, items: Iterable[Any], transform: Callable[[Any], Any] | None = None,
                 length: int | None = None):
        self.items, self.transform = items, transform
        self.length = length if length is not None else (
            len(items) if hasattr(items, "__len__") else None)

    def __iter__(self):
        for it in self.items:
            yield self.transform(it) if self.transform else it


def make_dataset(source: Any, model: ModelProto, cfg: DatasetConfig | None = None,
                 transform: Callable[[Any], Any] | None = None) -> Dataset:
    """Any accepted source -> Dataset of feeds {input name: batched array}."""
    cfg = cfg or DatasetConfig()
    specs = input_specs(model)
    if source is None:
        raise QuantizationError("no calibration data: pass --data FILE_OR_FOLDER (or a dataset)")
    if isinstance(source, Dataset):
        return Dataset(source, lambda it: _to_feed(it, specs, cfg), source.length)
    if isinstance(source, (str, Path)):
        items, n = _from_path(Path(source), specs, cfg)
        return Dataset(items, None, n)
    if hasattr(source, "get_inference_data"):        # nncf.Dataset
        source = source.get_inference_data()
    if isinstance(source, np.ndarray):
        spec = _single(specs, cfg, "an array")
        return Dataset([{spec[0]: s} for s in _split(source, specs, spec, "array")])
    if isinstance(source, dict) and all(isinstance(v, np.ndarray) for v in source.values()):
        return Dataset(_dict_samples(source, specs, "dict"))
    if not hasattr(source, "__iter__"):
        raise QuantizationError(f"dataset of type {type(source).__name__} is not iterable; pass "
                                "a path, an array, or an iterable of samples")

    def conv(it):
        return _to_feed(transform(it) if transform else it, specs, cfg)
    return Dataset(source, conv, len(source) if hasattr(source, "__len__") else None)


def take(ds: Dataset, n: int | None) -> Iterator[dict[str, np.ndarray]]:
    return iter(ds) if not n else itertools.islice(iter(ds), n)


def count(ds: Dataset, n: int | None) -> int | None:
    if ds.length is None:
        return n
    return min(ds.length, n) if n else ds.length


# ---- conversions -------------------------------------------------------------------------------

def _single(specs, cfg: DatasetConfig, what: str):
    if cfg.input_name:
        for s in specs:
            if s[0] == cfg.input_name:
                return s
        raise QuantizationError(f"--input-name {cfg.input_name!r} is not a model input; inputs: "
                                f"{[s[0] for s in specs]}")
    if len(specs) != 1:
        raise QuantizationError(
            f"the model has {len(specs)} inputs {[s[0] for s in specs]}; {what} feeds only one: "
            "use .npz files with one array per input name, or --input-name")
    return specs[0]


def _fix(arr: np.ndarray, spec, where: str) -> np.ndarray:
    name, dims, et = spec
    arr = np.asarray(arr)
    if arr.ndim == len(dims) - 1:
        arr = arr[None]
    if arr.ndim != len(dims):
        raise QuantizationError(f"{where}: sample for input {name!r} has shape {arr.shape}; the "
                                f"model expects rank {len(dims)} {dims}")
    bad = [(i, a, d) for i, (a, d) in enumerate(zip(arr.shape, dims)) if d and a != d and i > 0]
    if bad:
        raise QuantizationError(f"{where}: sample for input {name!r} has shape {arr.shape}, the "
                                f"model expects {['?' if d is None else d for d in dims]}")
    return np.ascontiguousarray(arr.astype(np_dtype(et), copy=False))


def _split(arr: np.ndarray, specs, spec, where: str) -> list[np.ndarray]:
    dims = spec[1]
    if arr.ndim == len(dims) + 1:
        return [_fix(a, spec, where) for a in arr]
    if arr.ndim == len(dims):
        b = dims[0] or 1
        if arr.shape[0] % b:
            raise QuantizationError(f"{where}: {arr.shape[0]} samples do not split into the "
                                    f"model's "
                                    f"batch of {b}")
        return [_fix(arr[i:i + b], spec, where) for i in range(0, arr.shape[0], b)]
    return [_fix(arr, spec, where)]


def _dict_samples(d: dict, specs, where: str) -> list[dict[str, np.ndarray]]:
    names = [s[0] for s in specs]
    if len(specs) == 1 and len(d) == 1 and names[0] not in d:
        d = {names[0]: next(iter(d.values()))}
    missing = [n for n in names if n not in d]
    if missing:
        raise QuantizationError(f"{where}: no array for model input(s) {missing}; arrays: "
                                f"{sorted(d)}")
    per = {s[0]: _split(np.asarray(d[s[0]]), specs, s, where) for s in specs}
    n = {len(v) for v in per.values()}
    if len(n) != 1:
        raise QuantizationError(f"{where}: inputs have different sample counts "
                                f"{ {k: len(v) for k, v in per.items()} }")
    return [{k: v[i] for k, v in per.items()} for i in range(n.pop())]


def _to_feed(item: Any, specs, cfg: DatasetConfig) -> dict[str, np.ndarray]:
    if isinstance(item, dict):
        missing = [s[0] for s in specs if s[0] not in item]
        if missing:
            raise QuantizationError(f"dataset item has keys {sorted(item)}; the model's inputs "
                                    f"{missing} are missing")
        return {s[0]: _fix(_np(item[s[0]]), s, "dataset item") for s in specs}
    if isinstance(item, (tuple, list)) and len(specs) > 1:
        if len(item) != len(specs):
            raise QuantizationError(f"dataset item has {len(item)} arrays, the model has "
                                    f"{len(specs)} inputs")
        return {s[0]: _fix(_np(v), s, "dataset item") for s, v in zip(specs, item)}
    if isinstance(item, (tuple, list)) and len(item) >= 1 and len(specs) == 1 and \
            not np.isscalar(item[0]) and np.asarray(_np(item[0])).ndim >= len(specs[0][1]) - 1:
        item = item[0]                       # (data, label) pairs from a DataLoader
    spec = _single(specs, cfg, "a dataset item")
    return {spec[0]: _fix(_np(item), spec, "dataset item")}


def _np(v):
    if hasattr(v, "detach"):                 # torch tensors
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _from_path(path: Path, specs, cfg: DatasetConfig):
    if not path.exists():
        raise QuantizationError(f"--data {path} does not exist")
    if path.is_file():
        if path.suffix == ".npy":
            spec = _single(specs, cfg, f"{path}")
            arrs = _split(np.load(path, mmap_mode="r"), specs, spec, str(path))
            return [{spec[0]: a} for a in arrs], len(arrs)
        if path.suffix == ".npz":
            with np.load(path) as z:
                samples = _dict_samples(dict(z), specs, str(path))
            return samples, len(samples)
        if path.suffix.lower() in IMAGE_EXTS:
            spec = _single(specs, cfg, "an image")
            return [{spec[0]: load_image(path, spec, cfg)}], 1
        raise QuantizationError(f"--data {path}: unsupported file type {path.suffix!r}; use "
                                ".npy, .npz, an image, or a folder of them")
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.suffix in (".npy", ".npz") or p.suffix.lower() in IMAGE_EXTS))
    if not files:
        raise QuantizationError(f"--data {path}: folder has no .npy, .npz or image files")
    kinds = {("img" if p.suffix.lower() in IMAGE_EXTS else p.suffix) for p in files}
    if len(kinds) > 1:
        raise QuantizationError(f"--data {path}: folder mixes file kinds {sorted(kinds)}")

    def gen():
        for p in files:
            if p.suffix == ".npz":
                with np.load(p) as z:
                    yield from _dict_samples(dict(z), specs, str(p))
            elif p.suffix == ".npy":
                spec = _single(specs, cfg, str(p))
                for a in _split(np.load(p), specs, spec, str(p)):
                    yield {spec[0]: a}
            else:
                spec = _single(specs, cfg, "images")
                yield {spec[0]: load_image(p, spec, cfg)}
    return _Reiterable(gen), len(files)


class _Reiterable:
    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return self.fn()


def load_image(path: Path, spec, cfg: DatasetConfig) -> np.ndarray:
    """Read, resize and normalise one image into a [1, C, H, W] (or NHWC) array."""
    try:
        from PIL import Image
    except ImportError as err:
        raise QuantizationError("image folders need Pillow: pip install pillow") from err
    name, dims, et = spec
    if len(dims) != 4:
        raise QuantizationError(f"images feed rank-4 inputs; input {name!r} has rank {len(dims)}")
    c_axis = 1 if cfg.image_layout == "NCHW" else 3
    h_axis, w_axis = (2, 3) if cfg.image_layout == "NCHW" else (1, 2)
    size = cfg.image_size or (dims[h_axis], dims[w_axis])
    if size[0] is None or size[1] is None:
        raise QuantizationError(f"input {name!r} has a dynamic image size {dims}: pass "
                                "--image-size H,W")
    channels = dims[c_axis] or (1 if cfg.image_color == "GRAY" else 3)
    try:
        img = Image.open(path)
        img = img.convert("L" if channels == 1 or cfg.image_color == "GRAY" else "RGB")
    # OSError: missing/unidentified/truncated file; PIL's plugins also raise SyntaxError,
    # EOFError and ValueError for malformed data
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as err:
        raise QuantizationError(f"cannot read image {path}: {err}") from err
    h, w = size
    if cfg.image_resize == "stretch":
        arr = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32)
    else:
        rw = min(w, max(1, int(round(img.width * h / img.height))))
        arr = np.zeros((h, w) + ((3,) if img.mode == "RGB" else ()), np.float32)
        arr[:, :rw] = np.asarray(img.resize((rw, h), Image.BILINEAR), np.float32)
        pad_mask = np.zeros((h, w), bool)
        pad_mask[:, rw:] = True
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if cfg.image_color == "BGR":
        arr = arr[:, :, ::-1]
    arr = arr / cfg.image_scale
    mean = np.asarray(cfg.image_mean, np.float32)
    std = np.asarray(cfg.image_std, np.float32)
    arr = (arr - mean) / std
    if cfg.image_resize != "stretch":
        arr[pad_mask] = 0.0                    # padding is zero after normalisation (PaddleOCR)
    if c_axis == 1:
        arr = arr.transpose(2, 0, 1)
    return arr[None].astype(np_dtype(et))
