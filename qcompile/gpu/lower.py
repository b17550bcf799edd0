"""Scheduled TIR PrimFuncs -> OpenCL C source + per-function launch lists.

The TVM wheel has no OpenCL runtime (docs/DEVELOPING.md, TVM 0.27 facts), so instead of `tvm.compile`'s host module
(whose packed functions would call into the missing runtime) we run TVM's own TIR pipeline
(`tvm.s_tir.pipeline.default_s_tir_pipeline`, the one `tvm.compile` uses for GPU targets) up
to `SplitHostDevice`, and read the split result:

* the device functions (`calling_conv` 2, one per GPU kernel) go through the device
  finalization passes and TVM's OpenCL codegen (`target.build.opencl`) -> one OpenCL C
  source for all kernels. The `tvm_callback_opencl_postproc` hook
  (`qcompile.gpu.schedules.intrinsics`) prepends the dot-product helpers there;
* each host function is a short straight-line program: buffer declarations, global
  workspace allocations, and `call_ffi_kernel(name, args..., launch extents...)` calls
  whose extents follow the kernel's `tirx.kernel_launch_params` tags. We interpret it into a
  `HostFunc`: its parameters (buffers), workspaces, and the ordered `Launch`es with their
  OpenCL global / local work sizes.

`MakePackedAPI` (and the two storage legalizers that must follow it) are skipped: they only
turn the host function into a TVM packed function with argument checks, which nothing here
calls. Anything the interpreter does not understand (a host-side loop, a dynamic extent, a
dynamic shared memory launch) raises `UnsupportedHostCode` naming the function.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np

from ..errors import QCompileError

KERNEL_CALL = "tirx.call_ffi_kernel"
_TAG_DIM = {"blockIdx.x": ("grid", 0), "blockIdx.y": ("grid", 1), "blockIdx.z": ("grid", 2),
            "threadIdx.x": ("block", 0), "threadIdx.y": ("block", 1),
            "threadIdx.z": ("block", 2)}


class UnsupportedHostCode(QCompileError):
    """A lowered function does something the OpenCL artifact cannot express."""


@dataclasses.dataclass
class KernelArg:
    kind: str                      # "param" | "workspace" | "scalar"
    index: int = -1                # parameter / workspace index
    value: Any = None              # scalar value
    dtype: str = ""                # scalar dtype (OpenCL kernel parameter type)

    def to_dict(self) -> dict:
        if self.kind == "scalar":
            return {"scalar": self.value, "dtype": self.dtype}
        return {self.kind: self.index}


@dataclasses.dataclass
class Launch:
    kernel: str
    args: list[KernelArg]
    global_size: tuple[int, int, int]
    local_size: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"kernel": self.kernel, "args": [a.to_dict() for a in self.args],
                "global": list(self.global_size), "local": list(self.local_size)}


@dataclasses.dataclass
class HostFunc:
    """What one scheduled PrimFunc does on the host: launches over its buffers."""
    name: str
    params: list[dict]             # [{"name", "shape", "dtype"}] in call order
    workspaces: list[int]          # byte sizes of global scratch buffers
    launches: list[Launch]

    def to_dict(self) -> dict:
        return {"params": self.params, "workspaces": self.workspaces,
                "launches": [l.to_dict() for l in self.launches]}


@dataclasses.dataclass
class LoweredKernels:
    source: str                    # OpenCL C, all kernels
    funcs: dict[str, HostFunc]     # PrimFunc name -> host program
    kernel_params: dict[str, list[str]]  # kernel name -> param types ("buffer" or dtype)


@contextlib.contextmanager
def _without_packed_api():
    """Run TVM's TIR pipeline without the packed-API wrapping of host functions. (It swaps
    three pass constructors in `tvm.tirx.transform` while the pipeline is assembled: not
    thread-safe, like everything that builds TVM pipelines from Python here.)"""
    import tvm
    from tvm import tirx

    def ident():
        return tvm.transform.Sequential([])

    names = ("MakePackedAPI", "FP8StorageLegalize", "BF16StorageLegalize")
    saved = {n: getattr(tirx.transform, n) for n in names}
    try:
        for n in names:
            setattr(tirx.transform, n, ident)
        yield
    finally:
        for n, f in saved.items():
            setattr(tirx.transform, n, f)


def _dtype_bytes(dtype: str) -> int:
    import tvm

    t = tvm.DataType(dtype)
    return max(1, (t.bits * t.lanes + 7) // 8)


def _buffer_info(buf) -> dict:
    return {"name": str(buf.name), "shape": [int(s) for s in buf.shape],
            "dtype": str(buf.dtype)}


def _is_buffer_param(p) -> bool:
    """TVM 0.27 TIR: a buffer parameter is a Var whose type is a BufferType."""
    from tvm.tirx.buffer import BufferType

    return isinstance(getattr(p, "ty", None), BufferType)


def _is_pointer(p) -> bool:
    return str(getattr(p, "dtype", "")) == "handle" or "Pointer" in type(p.ty).__name__


def _static(expr, env: dict, what: str, fname: str):
    """Evaluate a host expression that must be a compile-time constant."""
    import tvm
    from tvm import tirx

    if isinstance(expr, (int, float)):
        return expr
    for k, v in env.items():
        if k.same_as(expr):
            expr = v
            break
    expr = tvm.sym.Analyzer().simplify(expr)
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.FloatImm):
        return float(expr.value)
    raise UnsupportedHostCode(
        f"{fname}: {what} {expr} is not a compile-time constant; the OpenCL artifact needs "
        "static shapes (pass --input-shape)")


class _Env:
    """Host-side names: buffer vars -> ("param", i) / ("workspace", k); scalars -> values."""

    def __init__(self, fname: str):
        self.fname = fname
        self.buffers: list[tuple[Any, tuple[str, int]]] = []
        self.decls: list[tuple[Any, Any]] = []       # declared buffer var -> its data expr
        self.scalars: dict = {}

    def _find(self, table, var):
        for k, v in table:
            if k.same_as(var):
                return v
        return None

    def resolve(self, expr):
        """A kernel's pointer argument -> ("param", i) | ("workspace", k) | None."""
        for _ in range(64):
            if isinstance(expr, _tvm().ir.expr.Call) and \
                    getattr(expr.op, "name", "") == "tirx.buffer_data":
                expr = expr.args[0]
                continue
            hit = self._find(self.buffers, expr)
            if hit is not None:
                return hit
            data = self._find(self.decls, expr)
            if data is None:
                return None
            expr = data
        return None


def _tvm():
    import tvm

    return tvm


def _interpret_host(func, fname: str, device_funcs: dict) -> HostFunc:
    import tvm
    from tvm import tirx

    env = _Env(fname)
    params = []
    for i, p in enumerate(func.params):
        if not _is_buffer_param(p):
            raise UnsupportedHostCode(f"{fname}: parameter {p} is not a buffer")
        params.append(_buffer_info(p))
        env.buffers.append((p, ("param", i)))
    workspaces: list[int] = []
    launches: list[Launch] = []

    def visit(stmt):
        if stmt is None:
            return
        if isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                visit(s)
            return
        name = type(stmt).__name__
        if name == "DeclBuffer":
            env.decls.append((stmt.buffer, stmt.data))
        elif name == "AllocBuffer":
            buf = stmt.buffer
            scope = str(getattr(buf.ty, "storage_scope", "global") or "global")
            if scope != "global":
                raise UnsupportedHostCode(f"{fname}: host allocation in scope {scope!r}")
            n = 1
            for e in buf.shape:
                n *= _static(e, env.scalars, "allocation extent", fname)
            env.buffers.append((buf, ("workspace", len(workspaces))))
            workspaces.append(int(n) * _dtype_bytes(str(buf.dtype)))
        elif name in ("Bind", "LetStmt"):
            try:
                env.scalars[stmt.var] = tirx.const(
                    _static(stmt.value, env.scalars, "let", fname), stmt.var.dtype)
            except (UnsupportedHostCode, Exception):  # handles etc.: only kernel args matter
                pass
        elif name in ("AttrStmt", "AssertStmt"):
            pass
        elif name == "IfThenElse":
            cond = _static(stmt.condition, env.scalars, "host condition", fname)
            visit(stmt.then_case if cond else stmt.else_case)
            return
        elif name == "Evaluate":
            call = stmt.value
            if isinstance(call, tvm.ir.expr.Call) and getattr(call.op, "name", "") == KERNEL_CALL:
                launches.append(_launch(call, env, device_funcs, fname))
            elif not isinstance(call, tirx.IntImm):
                raise UnsupportedHostCode(f"{fname}: host statement {call} is not a kernel "
                                          "launch")
        else:
            raise UnsupportedHostCode(
                f"{fname}: host code has a {name} (only straight-line kernel launches are "
                "supported; is a loop or block left unbound to GPU threads?)")
        body = getattr(stmt, "body", None)
        if body is not None:
            visit(body)

    visit(func.body)
    return HostFunc(fname, params, workspaces, launches)


def _launch(call, env: _Env, device_funcs, fname) -> Launch:
    kname = str(call.args[0].value)
    dev = device_funcs.get(kname)
    if dev is None:
        raise UnsupportedHostCode(f"{fname}: launches unknown kernel {kname}")
    nparams = len(dev.params)
    tags = [str(t) for t in dev.attrs["tirx.kernel_launch_params"]]
    if any(t.startswith("tirx.use_dyn_shared_memory") for t in tags):
        raise UnsupportedHostCode(f"{fname}: kernel {kname} uses dynamic shared memory")
    rest = list(call.args[1:])
    kargs, extents = rest[:nparams], rest[nparams:]
    if len(extents) != len(tags):
        raise UnsupportedHostCode(f"{fname}: kernel {kname} has {len(extents)} launch extents "
                                  f"for tags {tags}")
    grid, block = [1, 1, 1], [1, 1, 1]
    for tag, ext in zip(tags, extents):
        if tag not in _TAG_DIM:
            raise UnsupportedHostCode(f"{fname}: kernel {kname} launch tag {tag!r}")
        which, dim = _TAG_DIM[tag]
        v = int(_static(ext, env.scalars, f"launch extent {tag}", fname))
        (grid if which == "grid" else block)[dim] = v
    args = []
    for p, a in zip(dev.params, kargs):
        if _is_pointer(p):
            hit = env.resolve(a)
            if hit is None:
                raise UnsupportedHostCode(f"{fname}: kernel {kname} buffer argument {a} is not "
                                          "a parameter or workspace of the function")
            args.append(KernelArg(hit[0], hit[1]))
        else:
            args.append(KernelArg("scalar", value=_static(a, env.scalars, "scalar argument",
                                                          fname), dtype=str(p.dtype)))
    gsize = tuple(int(g * b) for g, b in zip(grid, block))
    return Launch(kname, args, gsize, tuple(block))


def _exact_float(imm):
    ty = str(getattr(imm.ty, "dtype", ""))
    if ty != "float32":
        return imm
    v = np.float32(imm.value)
    if not np.isfinite(v) or np.float32(float("%e" % v)) == v:
        return imm
    import tvm

    bits = int(np.array(v, np.float32).view(np.uint32))
    return tvm.tirx.call_pure_extern("float32", "as_float", tvm.tirx.const(bits, "uint32"))


def exact_float_literals(mod):
    """f32 constants that TVM's C-family codegen would print inexactly -> `as_float(bits)`.

    CodeGenC prints a FloatImm with `std::scientific` at the stream's default precision (7
    significant digits), but a float32 needs 9: `0.031381707638502121f` (a quantize scale)
    becomes `3.138171e-02f`, a different float, and the quantized value moves by one where
    the division lands near a rounding tie. Constants whose 7-digit spelling is exact (0.5,
    255.0, ...) are left as they are."""
    import tvm_ffi
    from tvm import tirx

    return tvm_ffi.structural_map(mod, [(tirx.FloatImm, _exact_float)])


def lower_primfuncs(funcs: dict[str, Any], target) -> LoweredKernels:
    """Lower scheduled PrimFuncs (every loop bound to GPU threads) for an OpenCL target."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import pipeline as sp

    from .schedules import intrinsics

    intrinsics.register()
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    host = target.host or tvm.target.Target({"kind": "llvm"})
    mod = tirx.transform.BindTarget(target.with_host(host))(mod)
    with _without_packed_api():
        pipeline, _, finalize_device = sp.default_s_tir_pipeline()
        with target, tvm.transform.PassContext(opt_level=3):
            mod = pipeline(mod)
    device, hosts = {}, {}
    for gv, f in mod.functions.items():
        if int(f.attrs.get("calling_conv", 0)) == 2:
            device[gv] = f
        else:
            hosts[gv.name_hint] = f
    if not device:
        source = ""
    else:
        dmod = exact_float_literals(finalize_device()(tvm.IRModule(device)))
        build = tvm.get_global_func("target.build.opencl")
        source = build(dmod, target.without_host() if hasattr(target, "without_host")
                       else target).inspect_source()
    device_by_name = {gv.name_hint: f for gv, f in device.items()}
    out = {name: _interpret_host(f, name, device_by_name) for name, f in hosts.items()}
    kparams = {name: [("buffer" if _is_pointer(p) else str(p.dtype))
                      for p in f.params] for name, f in device_by_name.items()}
    return LoweredKernels(source, out, kparams)

