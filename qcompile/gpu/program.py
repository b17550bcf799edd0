"""The host-side call sequence of a whole model, read from its scheduled Relax `main`.

After fusion and scheduling, `main` of a static-shape model is a straight list of bindings:
`R.call_tir(prim_func, args, out_ty)` (a kernel call), `R.call_tir_inplace` (the same,
writing into an argument), `R.reshape` / `R.memory.view` of a value (`RewriteDataflowReshape`
turns reshape kernels into these: no copy, the result aliases the input's storage), tuples,
tuple items, variable aliases and constants. `build_program` turns it into a `Program`:

* storages: the OpenCL buffers to allocate (byte sizes), assigned by a greedy planner that
  reuses a freed buffer of the same size once its last reader has run (inputs, outputs and
  constants are never reused);
* inputs / outputs / constants: which storage holds which model tensor (constants are saved
  in `weights.npz` under their `key`);
* calls: for each kernel call, the PrimFunc and the storages bound to its parameters and
  global workspaces; what each PrimFunc launches is in `funcs` (`lower.HostFunc`).

Anything else in `main` (a packed call, a dynamic shape, control flow) raises
`UnsupportedHostCode` naming the binding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .lower import HostFunc, UnsupportedHostCode, lower_primfuncs

PROGRAM_FORMAT = "qcompile-opencl-program"
PROGRAM_VERSION = 1


@dataclasses.dataclass
class Tensor:
    storage: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class Program:
    storages: list[int]                       # byte size of each device buffer
    inputs: list[dict]                        # {"name", "storage", "shape", "dtype"}
    outputs: list[dict]
    constants: list[dict]                     # {"key", "storage", "shape", "dtype"}
    calls: list[dict]                         # {"func", "args": [storage], "workspaces": [...]}
    funcs: dict[str, HostFunc]
    source: str                               # OpenCL C
    kernel_params: dict[str, list[str]]
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION,
                "storages": self.storages, "inputs": self.inputs, "outputs": self.outputs,
                "constants": self.constants, "calls": self.calls,
                "funcs": {k: v.to_dict() for k, v in self.funcs.items()},
                "kernel_params": self.kernel_params}

    def kernel_names(self) -> list[str]:
        return sorted(self.kernel_params)


def _shape_dtype(ty, what: str):
    shape = getattr(ty, "shape", None)
    dtype = getattr(ty, "dtype", None)
    if shape is None or dtype is None:
        raise UnsupportedHostCode(f"{what}: type {ty} is not a tensor with a known shape")
    try:
        return tuple(int(s) for s in shape), str(dtype)
    except (TypeError, ValueError):
        raise UnsupportedHostCode(f"{what}: shape {list(shape)} is not static; the OpenCL "
                                  "artifact needs static shapes (pass --input-shape)") from None


class _Planner:
    """Greedy storage planner: exact-size reuse after a value's last use."""

    def __init__(self):
        self.sizes: list[int] = []
        self.free: dict[int, list[int]] = {}
        self.refs: dict[int, int] = {}
        self.pinned: set[int] = set()

    def alloc(self, nbytes: int, pinned: bool = False) -> int:
        nbytes = max(int(nbytes), 1)
        pool = self.free.get(nbytes)
        if pool and not pinned:
            sid = pool.pop()
        else:
            sid = len(self.sizes)
            self.sizes.append(nbytes)
        if pinned:
            self.pinned.add(sid)
        return sid

    def release(self, sid: int) -> None:
        if sid in self.pinned:
            return
        self.free.setdefault(self.sizes[sid], []).append(sid)


def _flatten(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    out = []
    for v in value:
        out.extend(_flatten(v))
    return out


def build_program(mod, target) -> Program:
    """Lower a fused, scheduled Relax module (every PrimFunc scheduled for the GPU)."""
    import tvm
    from tvm import relax, tirx

    mod = relax.transform.RewriteDataflowReshape()(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    main = mod["main"]
    prims = {gv.name_hint: f for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc)}

    # ---- pass 1: value graph, with the last use of every bound var ----------------------
    bindings = []
    for block in main.body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise UnsupportedHostCode(f"binding {b.var.name}: match_cast is not supported")
            bindings.append(b)
    last_use: dict[Any, int] = {}

    def uses(expr, idx):
        for v in relax.analysis.free_vars(expr):
            last_use[v] = idx

    for i, b in enumerate(bindings):
        uses(b.value, i)
    uses(main.body.body, len(bindings))

    planner = _Planner()
    env: dict[Any, Any] = {}
    inputs, constants, weights, calls = [], [], {}, []
    const_ids: list[tuple[Any, Tensor]] = []

    # ---- lower the PrimFuncs that are called (their workspaces are planned per call) ----
    called = sorted({b.value.args[0].name_hint for b in bindings
                     if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
                     and b.value.op.name in ("relax.call_tir", "relax.call_tir_inplace")})
    lowered = lower_primfuncs({n: prims[n] for n in called}, target)

    for p in main.params:
        shape, dtype = _shape_dtype(p.ty, f"input {p.name}")
        t = Tensor(planner.alloc(0, pinned=True), shape, dtype)
        planner.sizes[t.storage] = max(t.nbytes, 1)
        env[p] = t
        inputs.append({"name": p.name, "storage": t.storage, "shape": list(shape),
                       "dtype": dtype})

    def const(c) -> Tensor:
        for known, t in const_ids:
            if known.same_as(c):
                return t
        arr = c.value.numpy()
        t = Tensor(planner.alloc(max(arr.nbytes, 1), pinned=True), tuple(arr.shape),
                   str(arr.dtype))
        name = f"c{len(constants)}"
        weights[name] = np.ascontiguousarray(arr)
        constants.append({"key": name, "storage": t.storage, "shape": list(arr.shape),
                          "dtype": str(arr.dtype)})
        const_ids.append((c, t))
        return t

    def value_of(expr, where: str):
        if isinstance(expr, relax.Var):
            if expr not in env:
                raise UnsupportedHostCode(f"{where}: {expr.name} is not defined")
            return env[expr]
        if isinstance(expr, tvm.ir.expr.GenericConst) or type(expr).__name__ in (
                "Constant", "GenericConst"):
            return const(expr)
        if isinstance(expr, relax.Tuple):
            return [value_of(f, where) for f in expr.fields]
        raise UnsupportedHostCode(f"{where}: argument {type(expr).__name__} {expr} is not "
                                  "supported")

    refcount: dict[int, int] = {}

    def hold(t: Tensor):
        refcount[t.storage] = refcount.get(t.storage, 0) + 1

    def drop_dead(idx: int):
        for v in [v for v, last in last_use.items() if last == idx and v in env]:
            val = env.pop(v)
            for t in _flatten(val):
                refcount[t.storage] = refcount.get(t.storage, 1) - 1
                if refcount[t.storage] <= 0:
                    planner.release(t.storage)

    for i, b in enumerate(bindings):
        where = f"binding {b.var.name}"
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
            op = v.op.name
            if op in ("relax.call_tir", "relax.call_tir_inplace"):
                fname = v.args[0].name_hint
                if len(v.args) > 2:
                    raise UnsupportedHostCode(f"{where}: call_tir with symbolic shape "
                                              "arguments is not supported (static shapes only)")
                args = _flatten(value_of(v.args[1], where) if isinstance(v.args[1], relax.Tuple)
                                else [value_of(v.args[1], where)])
                out_tys = list(v.ty.fields) if isinstance(v.ty, relax.TupleType) else [v.ty]
                inplace = []
                if op == "relax.call_tir_inplace":
                    inplace = [int(x) for x in v.attrs.inplace_indices]
                outs = []
                for k, ty in enumerate(out_tys):
                    shape, dtype = _shape_dtype(ty, where)
                    if inplace and inplace[k] >= 0:
                        src = args[inplace[k]]
                        outs.append(Tensor(src.storage, shape, dtype))
                    else:
                        outs.append(Tensor(planner.alloc(int(np.prod(shape, dtype=np.int64))
                                                         * np.dtype(dtype).itemsize),
                                           shape, dtype))
                for t in outs:
                    hold(t)
                extra = [o for k, o in enumerate(outs) if not (inplace and inplace[k] >= 0)]
                hf = lowered.funcs[fname]
                if len(hf.params) != len(args) + len(extra):
                    raise UnsupportedHostCode(f"{where}: {fname} takes {len(hf.params)} "
                                              f"buffers, the call passes {len(args) + len(extra)}")
                # workspaces live only during the call: take them, then give them back
                ws = [planner.alloc(n) for n in hf.workspaces]
                for sid in ws:
                    planner.release(sid)
                calls.append({"func": fname, "args": [t.storage for t in args + extra],
                              "workspaces": ws, "binding": b.var.name})
                env[b.var] = outs[0] if not isinstance(v.ty, relax.TupleType) else outs
            elif op in ("relax.reshape", "relax.memory.view"):
                src = value_of(v.args[0], where)
                shape, dtype = _shape_dtype(b.var.ty, where)
                t = Tensor(src.storage, shape, dtype)
                if t.nbytes != src.nbytes:
                    raise UnsupportedHostCode(f"{where}: view changes the byte size")
                hold(t)
                env[b.var] = t
            else:
                raise UnsupportedHostCode(
                    f"{where}: Relax op {op} has no OpenCL lowering in the artifact (only "
                    "kernel calls, reshapes, tuples and constants run on the OpenCL runner)")
        elif isinstance(v, relax.TupleGetItem):
            tup = value_of(v.tuple_value, where)
            env[b.var] = tup[int(v.index)]
            for t in _flatten(env[b.var]):
                hold(t)
        elif isinstance(v, (relax.Var, relax.Tuple)) or type(v).__name__ in (
                "Constant", "GenericConst"):
            env[b.var] = value_of(v, where)
            for t in _flatten(env[b.var]):
                hold(t)
        else:
            raise UnsupportedHostCode(f"{where}: {type(v).__name__} is not supported by the "
                                      "OpenCL artifact")
        drop_dead(i)

    result = value_of(main.body.body, "main's result")
    outs = _flatten(result) if isinstance(result, list) else [result]

    return Program(storages=planner.sizes, inputs=inputs,
                   outputs=[{"storage": t.storage, "shape": list(t.shape), "dtype": t.dtype}
                            for t in outs],
                   constants=constants, calls=calls,
                   funcs={n: lowered.funcs[n] for n in called},
                   source=lowered.source, kernel_params=lowered.kernel_params, weights=weights)
