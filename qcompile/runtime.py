"""Load a build directory and run it: `qcompile.load(DIR)` -> `CompiledModel`.

The model is called with a dict of numpy arrays keyed by the model's own input names and
returns a dict keyed by its output names. Shapes and dtypes are checked against model.json
before anything runs, with errors that name the input and what was expected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import artifact
from .errors import ArtifactError, InputError
from .frontend import TensorSpec


class CompiledModel:
    """A loaded qcompile build (Relax VM over the exported model.so)."""

    def __init__(self, build_dir: str | os.PathLike, profile: bool = False,
                 meta: dict | None = None):
        self.build_dir = Path(build_dir)
        self.meta = meta if meta is not None else artifact.read_meta(self.build_dir)
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                       for t in self.meta["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                        for t in self.meta["outputs"]]
        kind = self.meta.get("runtime", "relax-vm")
        if kind != "relax-vm":
            raise ArtifactError(f"{self.build_dir} holds a {kind!r} artifact; load it with "
                                "qcompile.load(), which dispatches on the runtime kind")
        import tvm
        from tvm import relax

        from .util import quiet_stderr

        lib_path = self.build_dir / self.meta["files"].get("library", artifact.LIB_NAME)
        try:
            with quiet_stderr():
                lib = tvm.runtime.load_module(str(lib_path))
        except (RuntimeError, OSError, ValueError) as err:  # dlopen failure; missing file
            raise ArtifactError(f"cannot load {lib_path}: {err}. Was it built for another CPU "
                                f"(target {self.meta.get('target', {}).get('name')!r})?") from err
        self.device = tvm.cpu()
        self._vm = relax.VirtualMachine(lib, self.device)

    # ---- inputs ------------------------------------------------------------------------
    def _check(self, feed: Mapping[str, Any]) -> list:
        import tvm

        return [tvm.runtime.tensor(a, self.device) for a in check_feed(self.inputs, feed)]

    def _outputs(self, res) -> dict[str, np.ndarray]:
        items = list(res) if len(self.outputs) > 1 else [res]
        return {spec.name: r.numpy() for spec, r in zip(self.outputs, items)}

    # ---- running -----------------------------------------------------------------------
    def __call__(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._outputs(self._vm["main"](*self._check(feed)))

    run = __call__

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        return random_feed(self.inputs, seed)

    def time_runs(self, feed: Mapping[str, Any], niter: int, warmup: int = 3) -> np.ndarray:
        """Seconds per run for `niter` runs (after `warmup` untimed ones)."""
        args = self._check(feed)
        self._vm.set_input("main", *args)
        timer = self._vm.time_evaluator("invoke_stateful", self.device, number=1,
                                        repeat=max(1, niter), min_repeat_ms=0)
        for _ in range(max(0, warmup)):
            self._vm.invoke_stateful("main")
        return np.asarray(timer("main").results, dtype=np.float64)

    def profile(self, feed: Mapping[str, Any], repeat: int = 10) -> list[tuple[str, float]]:
        """Per-call timings: [(kernel symbol, seconds)] averaged over `repeat` runs.

        TVM 0.27's VM has no profiler; this times each VM call instruction through the VM's
        instrument hook (a few microseconds of overhead per call, so tiny kernels read high).
        """
        import time

        args = self._check(feed)
        acc: dict[int, list] = {}
        state = {"i": 0, "t": 0.0}

        def instrument(func, symbol, before, ret, *a):
            if before:
                state["t"] = time.perf_counter()
            else:
                dt = time.perf_counter() - state["t"]
                slot = acc.setdefault(state["i"], [str(symbol), 0.0])
                slot[1] += dt
                state["i"] += 1
            return 0

        self._vm["main"](*args)  # warm-up
        self._vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                state["i"] = 0
                self._vm["main"](*args)
        finally:
            self._vm.set_instrument(None)
        return [(sym, tot / repeat) for _, (sym, tot) in sorted(acc.items())]


def load(build_dir: str | os.PathLike, profile: bool = False):
    """Load a qcompile build directory; returns an object called with {name: array}."""
    meta = artifact.read_meta(build_dir)
    kind = meta.get("runtime", "relax-vm")
    if kind == "relax-vm":
        return CompiledModel(build_dir, profile=profile, meta=meta)
    if kind == "opencl":  # a `--target intel-gpu` build, run through pyopencl (docs/gpu.md)
        from .gpu.runtime import OpenCLModel

        return OpenCLModel(build_dir, meta, profile=profile)
    raise ArtifactError(f"{build_dir} holds an artifact for runtime {kind!r}, which this "
                        "qcompile cannot run (known: relax-vm, opencl); upgrade qcompile or "
                        "rebuild")


def random_feed(inputs, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for a model's input specs (`.name/.shape/.dtype`): N(0, 1) for floats,
    integers within [-128, 127] clipped to the dtype (the CPU and OpenCL runners share it)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for t in inputs:
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            feed[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        else:
            info = np.iinfo(t.dtype)
            feed[t.name] = rng.integers(max(info.min, -128), min(info.max, 127) + 1,
                                        t.shape).astype(t.dtype)
    return feed


def check_feed(inputs, feed: Mapping[str, Any]) -> list[np.ndarray]:
    """The feed's arrays in the order of `inputs` (specs with .name/.shape/.dtype), contiguous;
    a clear InputError for a non-dict, unknown/missing names, a wrong shape or dtype (the CPU
    and OpenCL runners share it)."""
    if not isinstance(feed, Mapping):
        raise InputError("inputs must be a dict {input name: numpy array}; the model's "
                         f"inputs are {[t.name for t in inputs]}")
    names = [t.name for t in inputs]
    unknown = [k for k in feed if k not in names]
    missing = [n for n in names if n not in feed]
    if unknown or missing:
        raise InputError(f"input names do not match the model: unknown {unknown}, missing "
                         f"{missing}; the model's inputs are {names}")
    arrs = []
    for spec in inputs:
        arr = np.asarray(feed[spec.name])
        if tuple(arr.shape) != tuple(spec.shape):
            raise InputError(f"input {spec.name!r} has shape {list(arr.shape)}, the model "
                             f"was built for {list(spec.shape)} (rebuild with --input-shape "
                             f"{spec.name}={','.join(map(str, arr.shape))} to change it)")
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {spec.name!r} has dtype {arr.dtype}, the model expects "
                             f"{spec.dtype}; convert it with .astype('{spec.dtype}')")
        arrs.append(np.asarray(arr, order="C"))  # (ascontiguousarray makes a scalar 1-D)
    return arrs
