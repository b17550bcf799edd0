"""Error metrics between fp32 and quantized outputs, and loading user metrics.

A user metric (`--metric module:function`, or a callable) is called as
`function(predict, samples) -> float`, higher is better, where `predict(sample)` runs the model
on one feed {input name: array} and returns its list of outputs, and `samples` is a list of
feeds. `metric_from_reference()` builds a metric that compares with the fp32 model's outputs.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import QuantizationError


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2); inf when identical."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((ref - test) ** 2))
    sig = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    if sig == 0:
        return float("-inf")
    return 10.0 * np.log10(sig / noise)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def top1_agreement(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Fraction of samples whose argmax (over the last axis) is the same."""
    same = [np.array_equal(np.argmax(r, axis=-1), np.argmax(t, axis=-1)) for r, t in zip(ref, test)]
    return float(np.mean(same)) if same else float("nan")


def load_metric(spec: str) -> Callable:
    """`module:function` or `path/to/file.py:function` -> the function."""
    if ":" not in spec:
        raise QuantizationError(f"--metric {spec!r} must be MODULE:FUNCTION (or FILE.py:FUNCTION)")
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise QuantizationError(f"--metric: file {path} does not exist")
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(mod)
        else:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")
            mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise QuantizationError(f"--metric {spec!r}: cannot import {mod_name!r}: {err}") from err
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise QuantizationError(f"--metric {spec!r}: {mod_name} has no function {fn_name!r}")
    return fn


def output_agreement(predict, samples, reference: list[list[np.ndarray]]) -> float:
    """Mean output SQNR (dB, capped at 100) of `predict` against reference outputs."""
    vals = []
    for s, ref in zip(samples, reference):
        out = predict(s)
        vals.append(min(100.0, np.mean([sqnr_db(r, o) for r, o in zip(ref, out)])))
    return float(np.mean(vals))
