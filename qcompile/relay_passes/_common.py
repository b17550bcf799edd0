"""What the low-precision passes share: quantization parameters read off the IR, constant
evaluation, and a binding rewriter that keeps each rewritten binding's var name (and so the
ONNX node name, the provenance the report speaks in)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .. import ops as qops

DQ = "relax.dequantize"
Q = "relax.quantize"

# |zp - round(zp)| below this (in units of one quantization step) counts as an integer zero
# point: FakeQuantize ranges written by NNCF put 0 on a level up to float rounding.
ZP_TOL = 1e-3


def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def dtype_of(expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def shape_of(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(s) for s in ty.shape)
    except (TypeError, ValueError):
        return None


def is_int(dtype: str | None) -> bool:
    return dtype is not None and ("int" in dtype)


def attr(call, key, default=None):
    return qops.attr(call, key, default)


def ints(v) -> list[int]:
    if v is None:
        return []
    return [int(x.value) if hasattr(x, "value") else int(x) for x in v]


# Lenient accessors for the int8 kernel dispatchers (x86 and OpenCL): any type with a
# dtype/shape (not only TensorType), and attributes as the raw TVM objects.
def loose_shape(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


def loose_dtype(expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if ty is not None and hasattr(ty, "dtype") else None


def raw_attr(call, key, default=None):
    attrs = call.attrs
    if attrs is None:
        return default
    try:
        return attrs[key]
    except (KeyError, TypeError, AttributeError, IndexError):
        return getattr(attrs, key, default)


def pyval(v):
    return v.value if hasattr(v, "value") else v


@dataclasses.dataclass(frozen=True)
class QParams:
    """Scale / zero point of a (de)quantize: per tensor (0-d) or per axis (1-d along `axis`)."""
    scale: np.ndarray          # float32
    zp: np.ndarray             # int64
    axis: int
    dtype: str                 # dtype of the quantized tensor

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zp.size == 1

    @property
    def s(self) -> float:
        return float(self.scale.reshape(-1)[0])

    @property
    def z(self) -> int:
        return int(self.zp.reshape(-1)[0])

    def uniform_zp(self) -> int | None:
        """The zero point if it is the same for every channel, else None."""
        u = np.unique(self.zp)
        return int(u[0]) if u.size == 1 else None

    def same(self, other: "QParams") -> bool:
        if self.dtype != other.dtype:
            return False
        if self.per_tensor and other.per_tensor:
            return self.s == other.s and self.z == other.z
        return (self.axis == other.axis and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale) and np.array_equal(self.zp, other.zp))

    def with_(self, **kw) -> "QParams":
        return dataclasses.replace(self, **kw)

    # IR constants
    def scale_const(self):
        return relax.const(np.asarray(self.scale, np.float32).reshape(
            () if self.scale.size == 1 else (-1,)))

    def zp_const(self, dtype: str | None = None):
        return relax.const(np.asarray(self.zp).reshape(
            () if self.zp.size == 1 else (-1,)).astype(dtype or self.dtype))


def make_params(scale, zp, axis: int, dtype: str) -> QParams:
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zp).astype(np.int64)
    if scale.size == 1 and zp.size == 1:
        scale, zp = scale.reshape(()), zp.reshape(())
    else:
        n = max(scale.size, zp.size)
        scale = np.broadcast_to(scale.reshape(-1), (n,)).copy()
        zp = np.broadcast_to(zp.reshape(-1), (n,)).copy()
    return QParams(scale, zp, int(axis), str(dtype))


def dequantize(q, p: QParams, name_dtype: str | None = None):
    return relax.op.dequantize(q, p.scale_const(), p.zp_const(name_dtype or dtype_of(q)),
                               axis=p.axis, out_dtype="float32")


def quantize(x, p: QParams):
    return relax.op.quantize(x, p.scale_const(), p.zp_const(p.dtype), axis=p.axis,
                             out_dtype=p.dtype)


def int_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------- constants
def fold_const(expr, bound: dict, depth: int = 16) -> np.ndarray | None:
    """The value of `expr` when it is a constant, or a var bound (in `bound`: var -> value,
    followed up to `depth` times) to one, through `permute_dims` / `reshape` / `astype` of a
    constant (how importers leave weights); else None. Shared by the int8 dispatchers."""
    seen = 0
    while isinstance(expr, relax.Var) and expr in bound and seen < depth:
        expr, seen = bound[expr], seen + 1
    if isinstance(expr, tvm.ir.expr.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        name = expr.op.name
        if name in ("relax.permute_dims", "relax.reshape", "relax.astype"):
            inner = fold_const(expr.args[0], bound, depth)
            if inner is None:
                return None
            if name == "relax.permute_dims":
                axes = raw_attr(expr, "axes")
                return np.transpose(inner, None if axes is None else [int(a) for a in axes])
            if name == "relax.astype":
                return inner.astype(str(raw_attr(expr, "dtype")))
            shape = loose_shape(expr)
            return None if shape is None else inner.reshape(shape)
    return None


# --------------------------------------------------------------------------- rewriter
class DataflowMutator(relax.PyExprMutator):
    """The skeleton every qcompile Relax mutator shares: `run()` visits each Relax function
    of the module (`begin_function` may prepare per-function state, or return False to skip
    one), `in_dataflow` says whether the binding being visited is in a dataflow block, and
    `bind_under(var, expr)` binds a replacement under `var`'s name -- a block output stays an
    output -- so later uses of `var` refer to it. Subclasses are decorated with
    `@relax.expr_functor.mutator` as usual."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod
        self.in_dataflow = False

    def begin_function(self, gv, func) -> bool:
        return True

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function) and self.begin_function(gv, func):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_dataflow_block_(self, block):
        self.in_dataflow = True
        try:
            return super().visit_dataflow_block_(block)
        finally:
            self.in_dataflow = False

    def bind_under(self, var, expr):
        """Bind `expr` under `var`'s name and make later uses of `var` refer to it."""
        new_value = self.builder_.normalize(expr)
        if self.in_dataflow and not isinstance(var, relax.DataflowVar):
            new_var = self.builder_.emit_output(new_value, name_hint=var.name)
        else:
            new_var = self.builder_.emit(new_value, name_hint=var.name)
        self.set_var_remap(var, new_var)
        return new_var


class BindingRewriter(DataflowMutator):
    """Visits every binding of every Relax function in order; `rewrite(var, value)` may emit
    helper bindings through `self.emit` and return the expression that replaces `value`
    (bound under `var`'s name), or None to keep the binding as it is. `value` has its
    arguments already remapped to the rewritten vars; `self.value_of(v)` returns the value
    bound to a (rewritten) var."""

    def __init__(self, mod: tvm.IRModule, ctx=None):
        super().__init__(mod)
        self.ctx = ctx
        self.uses: dict[Any, list] = {}
        self.renamed: dict[Any, str] = {}   # var -> the name it was meant to have

    # ---- driver
    def begin_function(self, gv, func) -> bool:
        self.uses = _uses(func)
        return True

    DONE = object()   # returned by `rewrite` when it has remapped the var itself

    def visit_var_binding_(self, binding):
        var = binding.var
        value = self.visit_expr(binding.value)
        new = self.rewrite(var, value)
        if new is self.DONE:
            return
        self.bind(var, value if new is None else new)

    def rewrite(self, var, value):  # pragma: no cover - overridden
        return None

    def finish(self, var, expr, name: str):
        """Bind `expr` as `name` and let later uses of `var` refer to it; returns DONE."""
        if not isinstance(var, relax.DataflowVar) and self.in_dataflow:
            self.bind(var, expr)
            return self.DONE
        new_var = self.emit(expr, name)
        self.set_var_remap(var, new_var)
        return self.DONE

    # ---- helpers
    def bind(self, var, expr):
        """`bind_under`, remembering the name when the builder had to suffix it."""
        new_var = self.bind_under(var, expr)
        if new_var.name != var.name:
            self.renamed[new_var] = var.name
        return new_var

    def emit(self, expr, name: str):
        new_var = self.builder_.emit(self.builder_.normalize(expr), name_hint=name)
        if new_var.name != name:
            self.renamed[new_var] = name
        return new_var

    def result(self) -> tvm.IRModule:
        """Run, drop dead bindings, and give rewritten vars back the names the builder had
        to suffix while the binding they replace was still alive."""
        mod = relax.transform.DeadCodeElimination()(self.run())
        return restore_names(mod, self.renamed)

    def value_of(self, expr):
        """The value bound to `expr` (a var of the rewritten function), or `expr`."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 64:
            v = self.lookup_binding(expr)
            if v is None:
                return expr
            if not isinstance(v, relax.Var):
                return v
            expr, seen = v, seen + 1
        return expr

    # ---- constants and quantization parameters
    def const(self, expr) -> np.ndarray | None:
        """numpy value of a constant, or of a shape op (reshape, permute_dims, astype,
        expand_dims, squeeze) of one; None otherwise."""
        return const_value(self.value_of(expr), self.value_of)

    def fconst(self, expr) -> np.ndarray | None:
        """A float constant: a constant, or the dequantization of a constant (QDQ models
        quantize scalar constants too)."""
        c = self.const(expr)
        if c is not None:
            return c
        d = self.dq(expr)
        if d is not None:
            qc = self.const(d[0])
            if qc is not None:
                from .. import reference

                return reference.dequantize(qc, d[1].scale, d[1].zp, d[1].axis)
        return None

    def dq(self, expr):
        """(quantized expr, QParams) if `expr` is `R.dequantize(q, const, const)`."""
        v = self.value_of(expr)
        if isinstance(v, relax.TupleGetItem):
            t = self.value_of(v.tuple_value)
            if isinstance(t, relax.Tuple):
                return self.dq(t.fields[int(v.index)])
        if op_name(v) != DQ:
            return None
        s, z = self.const(v.args[1]), self.const(v.args[2])
        if s is None or z is None:
            return None
        return v.args[0], make_params(s, z, int(v.attrs.axis), dtype_of(v.args[0]))

    def q(self, expr):
        """(float input, QParams) if `expr` is `R.quantize(x, const, const)`."""
        v = self.value_of(expr)
        if op_name(v) != Q:
            return None
        s, z = self.const(v.args[1]), self.const(v.args[2])
        if s is None or z is None:
            return None
        return v.args[0], make_params(s, z, int(v.attrs.axis), str(v.attrs.out_dtype))

    def report(self, var, op: str, reason: str) -> None:
        if self.ctx is not None:
            self.ctx.report(self.node_of(var), op, reason)

    def node_of(self, var) -> str:
        """The ONNX node a var belongs to: its own name, or for the frontend's anonymous
        intermediate bindings (`lv12`), the first named binding that consumes it."""
        names = self.ctx.node_names if self.ctx is not None else {}
        return owner(var, names, self.uses)


def owner(var, names: dict, uses: dict, depth: int = 0) -> str:
    name = var.name if hasattr(var, "name") else str(var)
    if name in names or depth > 6:
        return names.get(name, name)
    for b in uses.get(var, []):
        if b is not None:
            found = owner(b.var, names, uses, depth + 1)
            if found in names.values():
                return found
    return name


def restore_names(mod: tvm.IRModule, wanted: dict) -> tvm.IRModule:
    """Rename vars to their wanted names where no other var of the function uses that name."""
    if not wanted:
        return mod
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        taken = set()

        def visit(e):
            if isinstance(e, relax.Var):
                taken.add(e.name)

        relax.analysis.post_order_visit(func, visit)
        for b in (b for blk in func.body.blocks for b in blk.bindings):
            taken.add(b.var.name)
        names = {}
        for var, name in wanted.items():
            if var.name in taken and name not in taken:
                names[var] = name
                taken.add(name)
        if names:
            mod[gv] = _Renamer(mod, names).visit_expr(func)
    return mod


@relax.expr_functor.mutator
class _Renamer(relax.PyExprMutator):
    def __init__(self, mod, names):
        super().__init__(mod)
        self.names = names

    def _rename(self, var, cls):
        name = self.names.get(var)
        if name is None:
            return var
        nv = cls(name, var.ty)
        self.set_var_remap(var, nv)
        return nv

    def visit_dataflow_var_def_(self, var):
        return self._rename(var, relax.DataflowVar)

    def visit_var_def_(self, var):
        return self._rename(var, relax.Var)


def _uses(func) -> dict:
    """var -> list of values (calls) that use it, in program order."""
    uses: dict[Any, list] = {}

    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                for fv in relax.analysis.free_vars(b.value):
                    uses.setdefault(fv, []).append(b)
    for fv in relax.analysis.free_vars(func.body.body):
        uses.setdefault(fv, []).append(None)
    return uses


_SHAPE_OPS = {"relax.reshape", "relax.permute_dims", "relax.astype", "relax.expand_dims",
              "relax.squeeze", "relax.flatten"}


def const_value(expr, value_of=lambda e: e) -> np.ndarray | None:
    expr = value_of(expr)
    if isinstance(expr, tvm.ir.expr.GenericConst):
        return expr.value.numpy()
    name = op_name(expr)
    if name in _SHAPE_OPS:
        inner = const_value(expr.args[0], value_of)
        if inner is None:
            return None
        return eval_op(expr, [inner] + [_static(a) for a in expr.args[1:]])
    return None


def _static(a):
    if isinstance(a, relax.ShapeExpr):
        return [int(v) for v in a.values]
    return None


def eval_op(call, args):
    """Evaluate a call on numpy values with the reference executor's op table."""
    from .. import reference

    fn = reference._OPS.get(call.op.name)
    if fn is None:
        return None
    try:
        return fn(call, *args)
    # what numpy and the handlers raise for a call they cannot fold: symbolic or unknown
    # result shapes (TypeError), shape/axes mismatches (ValueError), missing attributes
    # (AttributeError), layouts the reference does not cover (NotImplementedError)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError,
            NotImplementedError):
        return None


def remap_axis(in_shape, out_shape, axis: int) -> int | None:
    """Where dimension `axis` of `in_shape` lands after a reshape to `out_shape` (None if it
    is merged with or split into other non-unit dimensions)."""
    if in_shape is None or out_shape is None:
        return None
    size = in_shape[axis]
    before = int(np.prod(in_shape[:axis], dtype=np.int64))
    acc = 1
    for j, d in enumerate(out_shape):
        if acc == before and d == size:
            return j
        acc *= d
        if acc > before:
            return None
    return None
