"""Write an OpenCL build directory (`runtime: "opencl"`, format in docs/gpu.md).

    DIR/model.json    the usual qcompile description (inputs, outputs, target, versions, op
                      table, ...) with "runtime": "opencl", "files" naming the three below and
                      an "opencl" summary (kernels, launches, buffer bytes, dot-product use)
    DIR/kernels.cl    OpenCL C source of every kernel (one program)
    DIR/program.json  device buffers, inputs / outputs / weights -> buffers, and the ordered
                      kernel launches with arguments and global / local work sizes
    DIR/weights.npz   the constants, keyed as program.json's "constants" name them
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifact as base
from .program import Program, build_program

KERNELS_NAME = "kernels.cl"
PROGRAM_NAME = "program.json"
WEIGHTS_NAME = "weights.npz"


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _dot4_calls(source: str) -> int:
    """Call sites of the DOT4 helper in the generated kernels (not its definitions)."""
    from .schedules import intrinsics

    return source.replace(intrinsics.PREAMBLE, "").count(intrinsics.HELPER + "(")


def summary(program: Program) -> dict:
    launches = [l for c in program.calls for l in program.funcs[c["func"]].launches]
    max_wg = max((int(np.prod(l.local_size)) for l in launches), default=1)
    return {
        "kernels": len(program.kernel_params),
        "calls": len(program.calls),
        "launches": len(launches),
        "buffers": len(program.storages),
        "buffer_bytes": int(sum(program.storages)),
        "weight_bytes": int(sum(w.nbytes for w in program.weights.values())),
        "max_work_group_size": max_wg,
        "int8_dot_product_calls": _dot4_calls(program.source),
    }


def write_program(out_dir: str | os.PathLike, program: Program, meta: dict,
                  schedules: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / KERNELS_NAME, program.source)
    _atomic_write(out / PROGRAM_NAME, json.dumps(program.to_json(), indent=1) + "\n")
    tmp = out / (WEIGHTS_NAME + ".tmp.npz")
    np.savez(tmp, **program.weights)
    os.replace(tmp, out / WEIGHTS_NAME)
    # a stale model.so from an earlier x86 build in the same directory would mislead
    stale = out / base.LIB_NAME
    if stale.exists():
        stale.unlink()
    meta = {"format": base.FORMAT, "format_version": base.FORMAT_VERSION, **meta,
            "runtime": "opencl",
            "opencl": {**summary(program), "schedules": dict(sorted((schedules or {}).items()))},
            "files": {"kernels": KERNELS_NAME, "program": PROGRAM_NAME,
                      "weights": WEIGHTS_NAME}}
    base.seal(out, meta)
    return out


def schedule(fused_mod, target, database=None, fallbacks=None) -> tuple[Any, dict]:
    """(scheduled module, {PrimFunc: what scheduled it}) for a fused Relax module; template
    failures go to `fallbacks` (`qcompile.fallbacks.FallbackLog`; None: they raise)."""
    from . import schedules as sched

    record: dict = {}
    mod = sched.schedule_module(fused_mod, target, database=database, record=record,
                                fallbacks=fallbacks)
    return mod, record


def write_scheduled(out_dir, scheduled: tuple[Any, dict], target, meta: dict
                    ) -> tuple[Path, dict]:
    """Lower a `schedule()` result and write the artifact; returns (dir, its model.json)."""
    mod, record = scheduled
    program = build_program(mod, target)
    called = {c["func"] for c in program.calls}
    out = write_program(out_dir, program, meta,
                        {k: v for k, v in record.items() if k in called})
    return out, base.read_meta(out)


def _io_from_main(mod) -> tuple[list[dict], list[dict]]:
    from tvm import relax

    main = mod["main"]
    inputs = [{"name": p.name, "shape": [int(x) for x in p.ty.shape], "dtype": str(p.ty.dtype)}
              for p in main.params]
    ret = main.body.body.ty
    tys = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    outputs = [{"name": "output" if len(tys) == 1 else f"output{i}",
                "shape": [int(x) for x in t.shape], "dtype": str(t.dtype)}
               for i, t in enumerate(tys)]
    return inputs, outputs


def build_relax(mod, spec, out_dir, database=None, report: list | None = None,
                meta: dict | None = None) -> Path:
    """Relax module in the integer IR (or fp32) -> OpenCL artifact in `out_dir`.

    The same steps `qcompile build --target intel-gpu` runs after import and the
    low-precision passes: int8 dispatch, fusion, scheduling (database, templates, dlight),
    lowering. Inputs / outputs are named after `main`'s parameters and "output[i]";
    template failures are in model.json `fallbacks`, as in a build."""
    from .. import codegen
    from ..fallbacks import FallbackLog
    from . import schedules as sched

    target = spec.tvm_target()
    mod = sched.dispatch(mod, spec, report=report)
    fused = codegen.fuse(mod, target)
    inputs, outputs = _io_from_main(fused)
    fallbacks = FallbackLog()
    scheduled = schedule(fused, target, database=database, fallbacks=fallbacks)
    info = {"inputs": inputs, "outputs": outputs,
            "target": {**spec.to_dict(), "tvm_target": str(target)},
            "fallbacks": fallbacks.to_list()}
    info.update(meta or {})
    out, _ = write_scheduled(out_dir, scheduled, target, info)
    return out
