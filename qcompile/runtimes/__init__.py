"""Runners for artifacts that are not a Relax VM library (`model.json` "runtime" != "relax-vm").

`qcompile.runtime.load()` sends every other runtime kind here:

* ``opencl`` -- `OpenCLModel` (`opencl.py`): the OpenCL kernels, launch list and weights of a
  `--target intel-gpu` build, run through pyopencl on any OpenCL 1.2+ device.
"""
from __future__ import annotations

import os

from ..errors import ArtifactError

KINDS = ("opencl",)


def load(kind: str, build_dir: str | os.PathLike, meta: dict, profile: bool = False, **kw):
    """The runner for an artifact of runtime `kind`; same interface as `CompiledModel`."""
    if kind == "opencl":
        from .opencl import OpenCLModel

        return OpenCLModel(build_dir, meta, profile=profile, **kw)
    raise ArtifactError(f"{build_dir} holds an artifact for runtime {kind!r}, which this "
                        f"qcompile cannot run (known: relax-vm, {', '.join(KINDS)}); upgrade "
                        "qcompile or rebuild")
