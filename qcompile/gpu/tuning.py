"""MetaSchedule builder and runners that measure OpenCL candidates through pyopencl.

MetaSchedule's own LocalBuilder/LocalRunner would `export_library` a TVM OpenCL module and
load it with the TVM runtime, which the wheel lacks (docs/DEVELOPING.md, TVM 0.27 facts). Here:

* `OpenCLBuilder` lowers each candidate PrimFunc with `qcompile.gpu.lower` (the same path as
  the build artifact: TVM's TIR pipeline + OpenCL codegen + launch extraction) and writes it
  as one JSON file (`{"source", "func", ...}`); a candidate the pipeline rejects (too many
  threads, unbound loop) fails here with the reason.
* `OpenCLRunner` runs candidates on a local OpenCL device: builds the program, allocates the
  arguments from `args_info` (random data), warms up once and times `repeat` x `number` runs
  from OpenCL profiling events (first launch start -> last launch end), seconds per run.
* `OpenCLRPCRunner` does the same on another machine through TVM RPC (tracker + key, the
  mechanism `qcompile rpc` / `tvm.exec.rpc_server` provides): the candidate JSON travels as a
  string to the remote global function `qcompile.gpu.measure`, which the RPC server must
  have registered (`qcompile.gpu.remote.server_init`, see scripts/gpu_rpc_server.py).

`builder_and_runner(spec, rpc=None)` gives the pair `qcompile.tuning.tuner.tune` takes.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from .lower import lower_primfuncs
from .opencl import Context

MEASURE_FUNC = "qcompile.gpu.measure"


def candidate_json(mod, target) -> dict:
    """Lower one MetaSchedule candidate (an IRModule with a scheduled `main`)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items()}
    name = "main" if "main" in funcs else next(iter(funcs))
    lowered = lower_primfuncs({name: funcs[name]}, target)
    return {"source": lowered.source, "func": lowered.funcs[name].to_dict(),
            "kernel_params": lowered.kernel_params}


def _random_arg(shape, dtype, rng) -> np.ndarray:
    dt = np.dtype("int8" if dtype == "bool" else dtype)
    if np.issubdtype(dt, np.floating):
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dt)


class Measurer:
    """Times lowered candidates on one OpenCL device (programs cached by source)."""

    def __init__(self, device=None, force_fallback: bool = False):
        self.ctx = Context(device, profiling=True)
        self.force_fallback = force_fallback

    def measure(self, cand: dict, args: list[tuple[tuple[int, ...], str]], number: int = 3,
                repeat: int = 1, seed: int = 0) -> list[float]:
        from .opencl import build_options

        cl, ctx, queue = self.ctx.cl, self.ctx.ctx, self.ctx.queue
        prg = self.ctx.program(cand["source"], build_options(self.ctx.device,
                                                             self.force_fallback))
        rng = np.random.default_rng(seed)
        mf = cl.mem_flags
        bufs = []
        for shape, dtype in args:
            host = _random_arg(tuple(shape), dtype, rng)
            bufs.append(cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host)
                        if host.nbytes else cl.Buffer(ctx, mf.READ_WRITE, 1))
        func = cand["func"]
        ws = [cl.Buffer(ctx, mf.READ_WRITE, max(int(n), 1)) for n in func["workspaces"]]
        launches = []
        for l in func["launches"]:
            self.ctx.check_launch(l["kernel"], l["local"])
            k = cl.Kernel(prg, l["kernel"])
            kargs = []
            for a in l["args"]:
                if "param" in a:
                    kargs.append(bufs[a["param"]])
                elif "workspace" in a:
                    kargs.append(ws[a["workspace"]])
                else:
                    kargs.append(np.dtype(a["dtype"]).type(a["scalar"]))
            k.set_args(*kargs)
            launches.append((k, tuple(l["global"]), tuple(l["local"])))

        def once():
            first = last = None
            for k, g, loc in launches:
                e = cl.enqueue_nd_range_kernel(queue, k, g, loc)
                first = first or e
                last = e
            return first, last

        once()
        queue.finish()
        costs = []
        for _ in range(max(1, repeat)):
            total = 0.0
            for _ in range(max(1, number)):
                first, last = once()
                queue.finish()
                if first is not None:
                    total += (last.profile.end - first.profile.start) * 1e-9
            costs.append(total / max(1, number))
        return costs


_MEASURERS: dict[Any, Measurer] = {}


def _measurer(device=None, force_fallback: bool = False) -> Measurer:
    key = (id(device), force_fallback)
    if key not in _MEASURERS:
        _MEASURERS[key] = Measurer(device, force_fallback)
    return _MEASURERS[key]


def measure_json(cand_text: str, args_text: str, number: int = 3, repeat: int = 1) -> str:
    """The RPC entry point (`qcompile.gpu.measure`): JSON in, JSON list of seconds out."""
    cand = json.loads(cand_text)
    args = [(tuple(a[0]), a[1]) for a in json.loads(args_text)]
    force = bool(os.environ.get("QCOMPILE_NO_DOT_PRODUCT"))
    return json.dumps(_measurer(None, force).measure(cand, args, int(number), int(repeat)))


def _args_of(runner_input) -> list[tuple[tuple[int, ...], str]]:
    out = []
    for info in runner_input.args_info:
        out.append((tuple(int(s) for s in info.shape), str(info.dtype)))
    return out


def _classes():
    """MetaSchedule subclasses, created lazily (importing MetaSchedule is slow)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class OpenCLBuilder(ms.builder.PyBuilder):
        """Lower candidates to OpenCL source + launches (JSON files)."""

        def __init__(self, work_dir: str | None = None):
            super().__init__()
            self.work_dir = work_dir or tempfile.mkdtemp(prefix="qcompile-ocl-build-")

        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                try:
                    cand = candidate_json(bi.mod, bi.target)
                    # MetaSchedule's RemoveBuildArtifact callback deletes the artifact's
                    # directory: one directory per candidate
                    cdir = tempfile.mkdtemp(prefix="cand", dir=self.work_dir)
                    path = os.path.join(cdir, "candidate.json")
                    with open(path, "w") as f:
                        json.dump(cand, f)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as err:  # noqa: BLE001 - a failed candidate, not a crash
                    results.append(ms.builder.BuilderResult(
                        None, f"OpenCLBuilder: {type(err).__name__}: {err}"))
            return results

    class _Done(ms.runner.PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self.res = result

        def done(self):
            return True

        def result(self):
            return self.res

    Done = derived_object(_Done)

    def _result(costs=None, error=None):
        return Done(ms.runner.RunnerResult(costs, error))

    @derived_object
    class OpenCLRunner(ms.runner.PyRunner):
        """Measure candidates on a local OpenCL device through pyopencl."""

        def __init__(self, number: int = 3, repeat: int = 1, device=None,
                     force_fallback: bool = False):
            super().__init__()
            self.number, self.repeat = number, repeat
            self.device, self.force_fallback = device, force_fallback

        def run(self, runner_inputs):
            m = _measurer(self.device, self.force_fallback)
            futures = []
            for ri in runner_inputs:
                try:
                    with open(ri.artifact_path) as f:
                        cand = json.load(f)
                    futures.append(_result(m.measure(cand, _args_of(ri), self.number,
                                                     self.repeat)))
                except Exception as err:  # noqa: BLE001
                    futures.append(_result(error=f"OpenCLRunner: {type(err).__name__}: "
                                           f"{str(err)[:2000]}"))
            return futures

    @derived_object
    class OpenCLRPCRunner(ms.runner.PyRunner):
        """Measure candidates on a remote OpenCL device through TVM RPC."""

        def __init__(self, rpc_config, number: int = 3, repeat: int = 1):
            super().__init__()
            self.rpc_config = rpc_config
            self.number, self.repeat = number, repeat
            self._session = None

        def _remote(self):
            if self._session is None:
                self._session = self.rpc_config.connect_server()
            return self._session.get_function(MEASURE_FUNC)

        def run(self, runner_inputs):
            futures = []
            for ri in runner_inputs:
                error = None
                for attempt in range(2):  # a session the server timed out: reconnect once
                    try:
                        with open(ri.artifact_path) as f:
                            text = f.read()
                        out = self._remote()(text, json.dumps(_args_of(ri)), self.number,
                                             self.repeat)
                        futures.append(_result(json.loads(str(out))))
                        error = None
                        break
                    except Exception as err:  # noqa: BLE001
                        self._session = None
                        error = f"OpenCLRPCRunner: {type(err).__name__}: {str(err)[:2000]}"
                if error is not None:
                    futures.append(_result(error=error))
            return futures

    return OpenCLBuilder, OpenCLRunner, OpenCLRPCRunner


def builder_and_runner(spec=None, rpc=None, number: int = 3, repeat: int = 1) -> dict:
    """{"builder": ..., "runner": ...} for `tuner.tune`: local OpenCL device, or the RPC
    tracker in `rpc` (a MetaSchedule `RPCConfig`, or a dict of its fields)."""
    from tvm.s_tir import meta_schedule as ms

    from .schedules import intrinsics, schedule

    intrinsics.register()
    schedule.register_rules()
    builder_cls, runner_cls, rpc_cls = _classes()
    if rpc is not None:
        if isinstance(rpc, dict):
            rpc = ms.runner.RPCConfig(**rpc)
        runner = rpc_cls(rpc, number=number, repeat=repeat)
    else:
        runner = runner_cls(number=number, repeat=repeat)
    return {"builder": builder_cls(), "runner": runner}


def time_candidate(mod, target, number: int = 10, repeat: int = 3) -> float:
    """Median seconds per run of one scheduled PrimFunc module on the local device (used by
    scripts/tune_gpu_demo.py to compare untuned and tuned schedules)."""
    cand = candidate_json(mod, target)
    func = mod["main"]
    args = [(tuple(int(s) for s in p.shape), str(p.dtype)) for p in func.params]
    costs = _measurer().measure(cand, args, number, repeat)
    return float(np.median(costs))

