"""Run a build on inputs from .npy files; save the outputs to .npz or print a summary."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from ..errors import InputError


def add_arguments(p) -> None:
    p.add_argument("build_dir", help="build directory from `qcompile build`")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input as a .npy file (repeatable; NAME= may be left out when the "
                   "model has one input); without --input, random inputs are used")
    p.add_argument("--output", default=None, metavar="OUT.npz",
                   help="save the outputs (keyed by output name) to this .npz file")


def parse_inputs(items: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    feed = {}
    for item in items:
        if "=" in item and not os.path.exists(item):
            name, path = item.split("=", 1)
        elif len(input_names) == 1:
            name, path = input_names[0], item
        else:
            raise InputError(f"--input {item!r}: the model has inputs {input_names}; write "
                             "--input NAME=FILE.npy")
        if not os.path.isfile(path):
            raise InputError(f"--input {name}: file {path!r} does not exist")
        try:
            feed[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(
                f"--input {name}: {path!r} is not a readable .npy file ({err})") from err
    return feed


def run(args) -> int:
    from ..runtime import load

    model = load(args.build_dir)
    names = [t.name for t in model.inputs]
    feed = parse_inputs(args.input, names) if args.input else model.random_inputs()
    if not args.input:
        print(f"no --input given: using random inputs for {names}")
    outs = model(feed)
    if args.output:
        np.savez(args.output, **outs)
        print(f"wrote {args.output}: {', '.join(outs)}")
    for name, arr in outs.items():
        line = f"{name}: shape {list(arr.shape)} {arr.dtype}"
        if arr.size:
            line += f" min {arr.min():.6g} max {arr.max():.6g} mean {arr.mean():.6g}"
            if arr.ndim == 2 and arr.shape[0] == 1 and arr.shape[1] > 1:
                top = np.argsort(arr[0])[::-1][:5]
                line += f" top-5 {top.tolist()}"
        print(line)
    return 0
