"""What the x86 and OpenCL int8 dispatchers share (a base class, not a pass itself).

Both rewrite the integer ops of the low-precision IR (docs/integer-ir.md) into their
target's kernel templates; `qcompile/relay_passes/x86_int8_dispatch.py` and
`qcompile/gpu/schedules/int8_dispatch.py` are the passes. This module holds the parts that
do not depend on the target:

* `Int8Dispatcher`: the mutator skeleton (`DataflowMutator`) plus the map of every binding
  to its original value (`bound`), constant folding of weights through
  astype / reshape / permute_dims (`const`), the report entry of an op left alone;
* `match_conv2d` / `match_matmul`: the operand checks of `R.nn.conv2d(u8 NCHW, s8 OIHW,
  out_dtype=int32)` and `R.matmul(u8, s8, out_dtype=int32)` and what they normalize
  (padding as (top, left, bottom, right); a constant right operand; a `permute_dims`
  swapping the right operand's last two axes, folded into the kernel);
* `Skip`: raised by a handler for an integer op no template takes; the dispatcher reports
  it (`left_alone` with the reason) and the build records it as a fallback;
* `check_target`: the family / dot-product guard of each `dispatch()`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax

from ._common import DataflowMutator, fold_const
from ._common import loose_dtype as _dtype, loose_shape as _shape
from ._common import raw_attr as _attr


class Skip(Exception):
    """An integer op the dispatch leaves alone (reported with this reason, not an error)."""


@dataclasses.dataclass(frozen=True)
class ConvMatch:
    data: relax.Expr                          # u8 NCHW
    weight: np.ndarray                        # s8 OIHW constant
    groups: int
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]        # (top, left, bottom, right)


@dataclasses.dataclass(frozen=True)
class MatmulMatch:
    a: relax.Expr                             # u8 [.., M, K]
    ashape: tuple
    bshape: tuple
    weight: np.ndarray | None                 # s8 [K, N] when the right operand is constant
    rhs: relax.Expr | None                    # otherwise: the s8 activation ...
    transpose_b: bool = False                 # ... as [.., N, K] when True


def check_target(spec, family: str, dot_products: tuple[str, ...] | None = None) -> None:
    """A dispatch is called for a target of its family (and a dot product it implements)."""
    if spec.family != family:
        raise ValueError(f"{family} int8 dispatch called for target {spec.name!r} "
                         f"(family {spec.family!r})")
    if dot_products is not None and spec.int8.dot_product not in dot_products:
        raise ValueError(f"target {spec.name!r} asks for int8 dot product "
                         f"{spec.int8.dot_product!r}; the {family} templates implement "
                         f"{', '.join(repr(d) for d in dot_products)}")


class Int8Dispatcher(DataflowMutator):
    """Base of the int8 dispatchers: subclasses are decorated with
    `@relax.expr_functor.mutator` and record `self.bound[var] = value` for every binding
    they visit (`remember`)."""

    def __init__(self, mod, report: list | None):
        super().__init__(mod)
        self.report = report if report is not None else []
        self.bound: dict[Any, relax.Expr] = {}       # original var -> original bound value

    def remember(self, var, value) -> None:
        self.bound[var] = value

    def const(self, expr) -> np.ndarray | None:
        return fold_const(expr, self.bound)

    def left_alone(self, var, op: str, reason: str) -> None:
        self.report.append({"var": var.name, "op": op, "left_alone": reason})

    def handle(self, var, value, handler_for: Callable[[str], Callable | None]):
        """Run the handler `handler_for(op name)` of a call binding: its result, or None
        when the value is not an op call, no handler takes the op, or the handler raised
        `Skip` (then the op is reported as left alone with the reason)."""
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
            return None
        name = value.op.name
        handler = handler_for(name)
        if handler is None:
            return None
        try:
            return handler(var, value)
        except Skip as why:
            self.left_alone(var, name, str(why))
            return None

    def bound_call(self, expr, op: str):
        """The call `expr` is bound to if it is a call of `op`, else None."""
        v = self.bound.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == op:
            return v
        return None

    # ------------------------------------------------------------------ operand matching
    def match_conv2d(self, call) -> ConvMatch | None:
        """None if `call` is not an integer conv this family rewrites at all; raises `Skip`
        for one it would take but cannot."""
        data, weight = call.args
        if (_dtype(data) != "uint8" or str(_attr(call, "out_dtype")) != "int32"
                or str(_attr(call, "data_layout")) != "NCHW"
                or str(_attr(call, "kernel_layout")) != "OIHW"
                or str(_attr(call, "out_layout")) != "NCHW"):
            return None
        w = self.const(weight)
        if w is None or w.dtype != np.int8:
            raise Skip("conv2d weight is not an int8 constant")
        pad = [int(p) for p in _attr(call, "padding")]
        if len(pad) == 2:
            pad = [pad[0], pad[1], pad[0], pad[1]]
        return ConvMatch(data, w, int(_attr(call, "groups")),
                         tuple(int(s) for s in _attr(call, "strides")),
                         tuple(int(d) for d in _attr(call, "dilation")), tuple(pad))

    def match_matmul(self, call, rhs_2d_broadcasts: bool = False) -> MatmulMatch | None:
        """None if `call` is not a u8 x s8 -> s32 matmul; raises `Skip` for one no template
        takes. rhs_2d_broadcasts: a 2-D activation right operand is shared by every batch
        (the x86 batch-matmul template allows it)."""
        a, b = call.args
        if _dtype(a) != "uint8" or str(_attr(call, "out_dtype")) != "int32":
            return None
        if _dtype(b) != "int8":
            raise Skip("matmul right operand is not int8")
        ashape, bshape = _shape(a), _shape(b)
        if ashape is None or bshape is None or len(ashape) < 2:
            raise Skip("matmul needs static shapes")
        w = self.const(b)
        if w is not None:
            if w.ndim != 2:
                raise Skip("constant matmul weight is not 2-D")
            return MatmulMatch(a, tuple(ashape), tuple(bshape), w, None)
        src, transpose_b = b, False
        perm = self.bound_call(b, "relax.permute_dims")
        nd = len(bshape)
        if perm is not None and _attr(perm, "axes") is not None and [
                int(x) for x in _attr(perm, "axes")] == list(range(nd - 2)) + [nd - 1, nd - 2]:
            src, transpose_b = perm.args[0], True
        same_batch = nd == len(ashape) and tuple(bshape[:-2]) == tuple(ashape[:-2])
        if not (same_batch or (rhs_2d_broadcasts and nd == 2)):
            raise Skip("batch dims of the matmul operands differ (broadcasting)")
        return MatmulMatch(a, tuple(ashape), tuple(bshape), None, src, transpose_b)
