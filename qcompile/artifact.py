"""The build artifact: `DIR/model.so` (one shared library, weights inside) + `DIR/model.json`.

model.json holds what a user or a later tool needs to run and reproduce the build: inputs and
outputs (names, shapes, dtypes), the target (name and its full description), the qcompile /
TVM / ONNX versions, the resolved build configuration, the tuning summary, and the per-op
table (op, ONNX node, precision, kernel) that the low-precision and kernel stages fill.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError

FORMAT = "qcompile-artifact"
FORMAT_VERSION = 1
LIB_NAME = "model.so"
META_NAME = "model.json"


def write(out_dir: str | os.PathLike, executable, meta: dict[str, Any]) -> Path:
    from .util import quiet_stderr

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / LIB_NAME
    tmp_lib = out / (LIB_NAME + ".tmp.so")
    with quiet_stderr():
        executable.export_library(str(tmp_lib))
    os.replace(tmp_lib, lib)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
            "files": {"library": LIB_NAME}}
    tmp_meta = out / (META_NAME + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    os.replace(tmp_meta, out / META_NAME)
    return out


def read_meta(build_dir: str | os.PathLike) -> dict[str, Any]:
    d = Path(build_dir)
    if not d.exists():
        raise ArtifactError(f"build directory {str(d)!r} does not exist; run `qcompile build "
                            f"MODEL.onnx -o {d}` first")
    if d.is_file():
        raise ArtifactError(f"{str(d)!r} is a file; pass the build directory that holds "
                            f"{LIB_NAME} and {META_NAME}")
    meta_path = d / META_NAME
    if not meta_path.is_file():
        raise ArtifactError(f"{str(d)!r} has no {META_NAME}: not a qcompile build directory "
                            "(or an interrupted build); rebuild it")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{meta_path} is not valid JSON ({err}); rebuild") from err
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not a qcompile artifact description")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{meta_path} was written by a newer qcompile (format "
                            f"{meta.get('format_version')}); upgrade qcompile to load it")
    if meta.get("runtime", "relax-vm") != "relax-vm":
        # other runtimes (qcompile.runtimes) list their own files; all must be there
        missing = [f for f in meta.get("files", {}).values() if not (d / f).is_file()]
        if missing:
            raise ArtifactError(f"{str(d)!r} lacks {', '.join(missing)}; the build did not "
                                "finish, rebuild it")
        return meta
    lib = d / meta.get("files", {}).get("library", LIB_NAME)
    if not lib.is_file():
        raise ArtifactError(f"{str(d)!r} lacks {lib.name}; the build did not finish, rebuild it")
    return meta
