"""Typed configuration: dataclasses whose fields map one-to-one onto CLI flags.

A field's `metadata` carries its flag and help text (`flag(...)` below). `add_arguments()`
adds one argparse option per field; `from_args()` builds the dataclass back; `to_dict()`
gives the resolved configuration that is written into every build artifact, and
`from_dict()` reads it back, so a build can be reproduced from its `model.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable

from .errors import QCompileError


def flag(default: Any = dataclasses.MISSING, *, help: str, name: str | None = None,
         parse: Callable[[str], Any] | None = None, choices: list[str] | None = None,
         repeat: bool = False, default_factory: Any = dataclasses.MISSING,
         metavar: str | None = None) -> Any:
    """A dataclass field that is also a CLI flag.

    name: the flag (default `--field-name`); parse: str -> value for non-trivial types;
    repeat: the flag may be given several times, each value parsed and merged (dicts) or
    appended (lists)."""
    md = {"help": help, "name": name, "parse": parse, "choices": choices, "repeat": repeat,
          "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else tp
    return tp


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("name") or "--" + field.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass `cls` (fields without flag metadata are skipped)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        md = f.metadata
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": md["help"], "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = md.get("parse") or (tp if tp in (int, float, str) else str)
            if md.get("repeat"):
                kwargs["action"] = "append"
            if md.get("choices"):
                kwargs["choices"] = md["choices"]
            if md.get("metavar"):
                kwargs["metavar"] = md["metavar"]
        parser.add_argument(flag_name(f), **kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build `cls` from parsed args: given flags override defaults; repeated flags merge."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        if f.metadata.get("repeat") and isinstance(v, list):
            if v and all(isinstance(x, dict) for x in v):
                merged: dict = {}
                for x in v:
                    merged.update(x)
                v = merged
            else:
                flat = []
                for x in v:
                    flat.extend(x if isinstance(x, (list, tuple)) else [x])
                v = flat
        values[f.name] = v
    values.update(overrides)
    return cls(**values)


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_dict(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved configuration as plain JSON-able data."""
    return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def from_dict(cls: type, data: dict[str, Any]):
    """Inverse of `to_dict` for flat configs; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise QCompileError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for k, v in data.items():
        tp = _base_type(hints[k])
        if typing.get_origin(tp) is dict and isinstance(v, dict):
            vt = typing.get_args(tp)[1] if typing.get_args(tp) else None
            if _base_type(vt) is not None and typing.get_origin(_base_type(vt)) is tuple:
                v = {kk: tuple(vv) for kk, vv in v.items()}
        values[k] = v
    return cls(**values)


# ---- parsers shared by several configs ------------------------------------------------------

def parse_shape_assignment(text: str) -> dict[str, tuple[int, ...]]:
    """`name=1,3,224,224` -> {"name": (1, 3, 224, 224)} (for --input-shape)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--input-shape expects NAME=D1,D2,... (e.g. input=1,3,224,224), got {text!r}")
    name, dims = text.rsplit("=", 1)
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-shape {text!r}: dimensions must be integers, e.g. {name}=1,3,224,224") from None
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--input-shape {text!r}: needs a name and positive dimensions")
    return {name: shape}


def _scalar(text: str):
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(t)
    except ValueError:
        return float(t)          # 2.5, 1e3, nan, inf; ValueError when not a number


def parse_value_assignment(text: str) -> dict[str, tuple]:
    """`name=16000` / `name=1,2.5` / `name=true` -> {"name": (16000,)} (for --input-value):
    numbers (ints stay ints) or true/false; the dtype comes from the model input."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--input-value expects NAME=V[,V...] (e.g. sr=16000), got {text!r}")
    name, vals = text.rsplit("=", 1)
    parts = [v for v in vals.split(",") if v.strip()]
    if not name or not parts:
        raise argparse.ArgumentTypeError(
            f"--input-value {text!r}: needs an input name and at least one value, e.g. sr=16000")
    try:
        return {name: tuple(_scalar(v) for v in parts)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-value {text!r}: values must be numbers or true/false, comma-separated"
        ) from None


def parse_duration(text: str) -> float:
    """`90`, `90s`, `20m`, `1.5h` -> seconds."""
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        return float(t[:-1]) * mult if mult else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"duration {text!r} must look like 90, 90s, 20m or 1.5h") from None
