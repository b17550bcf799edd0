"""Run an OpenCL artifact (`runtime: "opencl"`) through pyopencl, without TVM.

The artifact (docs/gpu.md) is `kernels.cl` (OpenCL C of every kernel), `program.json`
(device buffers, which buffer holds which input / output / weight, and the ordered kernel
launches with their arguments and global / local work sizes) and `weights.npz`. Loading
compiles the source once for the chosen device (`qcompile.gpu.opencl.pick_device`),
allocates every buffer, uploads the weights and creates one kernel object per launch with
its arguments already set, so a run is: copy the inputs in, enqueue the launches in order
on one in-order queue, copy the outputs back. Only numpy and pyopencl are needed here.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ArtifactError
from ..frontend import TensorSpec
from . import opencl as ocl

PROGRAM_NAME = "program.json"
KERNELS_NAME = "kernels.cl"
WEIGHTS_NAME = "weights.npz"


def _np_dtype(dtype: str):
    return np.dtype("int8") if dtype == "bool" else np.dtype(dtype)


class OpenCLModel:
    """A loaded OpenCL artifact; same interface as `qcompile.runtime.CompiledModel`."""

    def __init__(self, build_dir: str | os.PathLike, meta: dict, profile: bool = False,
                 device=None, force_fallback: bool | None = None, source_prefix: str = "",
                 build_options: list[str] | None = None):
        """`force_fallback` (or env QCOMPILE_NO_DOT_PRODUCT=1) compiles the `char4` int8 dot
        product even where `cl_khr_integer_dot_product` exists; `source_prefix` and
        `build_options` are for tests (e.g. emulating the extension on PoCL)."""
        self.build_dir = Path(build_dir)
        self.meta = meta
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                       for t in meta["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                        for t in meta["outputs"]]
        files = meta.get("files", {})
        try:
            self.program = json.loads((self.build_dir / files.get("program", PROGRAM_NAME))
                                      .read_text())
            source = (self.build_dir / files.get("kernels", KERNELS_NAME)).read_text()
            weights = np.load(self.build_dir / files.get("weights", WEIGHTS_NAME),
                              allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{self.build_dir}: OpenCL artifact is incomplete or corrupt "
                                f"({err}); rebuild it") from err
        if force_fallback is None:
            force_fallback = bool(os.environ.get("QCOMPILE_NO_DOT_PRODUCT"))
        self.cl_ctx = ocl.Context(device, profiling=True)
        cl = self.cl_ctx.cl
        self.device = self.cl_ctx.device
        self.dot_product = ocl.has_dot_product(self.device) and not force_fallback
        self.source = source_prefix + source
        prg = self.cl_ctx.program(self.source, ocl.build_options(self.device, force_fallback)
                                  + list(build_options or ()))
        ctx, queue = self.cl_ctx.ctx, self.cl_ctx.queue
        mf = cl.mem_flags
        self._buffers = [cl.Buffer(ctx, mf.READ_WRITE, max(int(n), 1))
                         for n in self.program["storages"]]
        for c in self.program["constants"]:
            arr = np.ascontiguousarray(weights[c["key"]])
            if arr.nbytes:
                cl.enqueue_copy(queue, self._buffers[c["storage"]], arr, is_blocking=False)
        queue.finish()
        self._launches = []          # (kernel, global, local, call index)
        self._call_names = []
        funcs = self.program["funcs"]
        for ci, call in enumerate(self.program["calls"]):
            f = funcs[call["func"]]
            self._call_names.append(call["func"])
            for launch in f["launches"]:
                self.cl_ctx.check_launch(launch["kernel"], launch["local"])
                k = cl.Kernel(prg, launch["kernel"])
                args = []
                for a in launch["args"]:
                    if "param" in a:
                        args.append(self._buffers[call["args"][a["param"]]])
                    elif "workspace" in a:
                        args.append(self._buffers[call["workspaces"][a["workspace"]]])
                    else:
                        args.append(np.dtype(a["dtype"]).type(a["scalar"]))
                k.set_args(*args)
                self._launches.append((k, tuple(launch["global"]), tuple(launch["local"]),
                                       ci))
        self._in = [(self.program["inputs"][i]["storage"], spec)
                    for i, spec in enumerate(self.inputs)]
        self._out = [(o["storage"], spec) for o, spec in zip(self.program["outputs"],
                                                            self.outputs)]

    # ---- inputs ------------------------------------------------------------------------
    def _check(self, feed: Mapping[str, Any]) -> list[np.ndarray]:
        from ..runtime import check_feed

        return check_feed(self.inputs, feed)

    def _upload(self, arrs) -> None:
        cl = self.cl_ctx.cl
        for (sid, _), arr in zip(self._in, arrs):
            if arr.nbytes:
                cl.enqueue_copy(self.cl_ctx.queue, self._buffers[sid], arr, is_blocking=False)

    def _enqueue_all(self, events: list | None = None) -> None:
        cl, queue = self.cl_ctx.cl, self.cl_ctx.queue
        for k, g, l, ci in self._launches:
            evt = cl.enqueue_nd_range_kernel(queue, k, g, l)
            if events is not None:
                events.append((ci, evt))

    def _download(self) -> dict[str, np.ndarray]:
        cl = self.cl_ctx.cl
        out = {}
        for sid, spec in self._out:
            arr = np.empty(spec.shape, _np_dtype(spec.dtype))
            if arr.nbytes:
                cl.enqueue_copy(self.cl_ctx.queue, arr, self._buffers[sid], is_blocking=False)
            out[spec.name] = arr
        self.cl_ctx.queue.finish()
        return out

    # ---- running -----------------------------------------------------------------------
    def __call__(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self._upload(self._check(feed))
        self._enqueue_all()
        return self._download()

    run = __call__

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        from ..runtime import random_feed

        return random_feed(self.inputs, seed)

    def time_runs(self, feed: Mapping[str, Any], niter: int, warmup: int = 3) -> np.ndarray:
        """Seconds per run (all launches, inputs already on the device) for `niter` runs."""
        self._upload(self._check(feed))
        queue = self.cl_ctx.queue
        for _ in range(max(0, warmup)):
            self._enqueue_all()
            queue.finish()
        out = []
        for _ in range(max(1, niter)):
            t0 = time.perf_counter()
            self._enqueue_all()
            queue.finish()
            out.append(time.perf_counter() - t0)
        return np.asarray(out, dtype=np.float64)

    def profile(self, feed: Mapping[str, Any], repeat: int = 10) -> list[tuple[str, float]]:
        """Per-call device time from OpenCL profiling events: [(PrimFunc, seconds)]."""
        self._upload(self._check(feed))
        self._enqueue_all()
        self.cl_ctx.queue.finish()
        acc = np.zeros(len(self._call_names))
        for _ in range(max(1, repeat)):
            events: list = []
            self._enqueue_all(events)
            self.cl_ctx.queue.finish()
            for ci, evt in events:
                acc[ci] += (evt.profile.end - evt.profile.start) * 1e-9
        return [(name, float(acc[i] / max(1, repeat)))
                for i, name in enumerate(self._call_names)]

    def device_info(self) -> dict:
        info = ocl.describe(self.device)
        info["dot_product_path"] = "dot()" if self.dot_product else "char4 fallback"
        return info
