"""The build artifact: `DIR/model.so` (one shared library, weights inside) + `DIR/model.json`.

model.json holds what a user or a later tool needs to run and reproduce the build: inputs and
outputs (names, shapes, dtypes), the target (name and its full description), the qcompile /
TVM / ONNX versions, the resolved build configuration, the tuning summary, and the per-op
table (op, ONNX node, precision, kernel) that the low-precision and kernel stages fill.

`seal()` ties model.json to the files it describes: `checksums` holds the SHA-256 of every
file in `files`, and `meta_sha256` the SHA-256 of model.json's own content (without that
key), so an edited model.json, a truncated or swapped model.so, or a missing key is an
`ArtifactError` at `read_meta()`, never a KeyError or a crash inside the runtime. Loading
also checks the CPU: an artifact whose target requires flags the host lacks (vpdpbusd on a
CPU without VNNI) is refused with the flags named, not run into SIGILL.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError

FORMAT = "qcompile-artifact"
FORMAT_VERSION = 2
LIB_NAME = "model.so"
META_NAME = "model.json"
# keys every artifact description has (read_meta refuses one without them)
REQUIRED_KEYS = ("inputs", "outputs", "target", "files", "checksums", "meta_sha256")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_sha256(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal(out_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write DIR/model.json from `meta` (whose `files` are already in DIR), with the checksums
    of those files and of model.json itself."""
    out = Path(out_dir)
    meta = dict(meta)
    meta["checksums"] = {f: _file_sha256(out / f) for f in sorted(meta["files"].values())}
    meta["meta_sha256"] = _meta_sha256(meta)
    tmp_meta = out / (META_NAME + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    os.replace(tmp_meta, out / META_NAME)


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
    seal(out, meta)
    return out


def read_meta(build_dir: str | os.PathLike, check_cpu: bool = True) -> dict[str, Any]:
    """model.json of a build directory, checked: format, required keys, its own checksum,
    the checksums of its files and the host CPU's flags (`check_cpu`; off for `inspect`)."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{meta_path} is not valid JSON ({err}): truncated or edited; "
                            "rebuild") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not a qcompile artifact description")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{meta_path} was written by a newer qcompile (format "
                            f"{version}); upgrade qcompile to load it")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"{meta_path} is format {version}, from an older qcompile whose "
                            "artifacts carry no checksums; rebuild it")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ArtifactError(f"{meta_path} lacks the key(s) {', '.join(missing)}: edited or "
                            "written by something else; rebuild it")
    if meta["meta_sha256"] != _meta_sha256(meta):
        raise ArtifactError(f"{meta_path} does not match its checksum (meta_sha256): it was "
                            "edited after the build; rebuild it (or restore the file)")
    files = meta["files"]
    absent = [f for f in files.values() if not (d / f).is_file()]
    if absent:
        raise ArtifactError(f"{str(d)!r} lacks {', '.join(absent)}; the build did not "
                            "finish, rebuild it")
    for f, digest in meta["checksums"].items():
        if _file_sha256(d / f) != digest:
            raise ArtifactError(f"{d / f} does not match the checksum in {META_NAME}: "
                                "corrupt, truncated or from another build; rebuild it")
    if check_cpu:
        check_host_cpu(meta, meta_path)
    return meta


def check_host_cpu(meta: dict[str, Any], where: str | os.PathLike = META_NAME) -> None:
    """Refuse an artifact whose target needs CPU flags this host lacks (its code would die
    with SIGILL on the first such instruction)."""
    from .targets import cpu_flags

    target = meta["target"]
    if not isinstance(target, dict):
        raise ArtifactError(f"{where}: `target` is not a target description; rebuild")
    required = target.get("required_flags", [])
    have = cpu_flags()
    lacking = [f for f in required if f not in have]
    if lacking:
        raise ArtifactError(
            f"{where}: built for target {target.get('name')!r}, which needs CPU flag(s) "
            f"{', '.join(lacking)} that this CPU lacks (running it would crash with an illegal "
            "instruction). Rebuild on this machine with --target host, or pick a target from "
            "`qcompile targets` that this CPU runs.")
