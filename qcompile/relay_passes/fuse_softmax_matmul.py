"""Fuse `matmul(softmax(x, axis=-1), v)` (f32) into one `softmax_matmul` kernel (CPU builds).

Expects: a Relax module before `LegalizeOps` (the f32 remainder of an int8 model, or an fp32
model); runs in `codegen`'s pre-fusion passes for LLVM CPU targets only.

Guarantees: a binding `y = R.matmul(p, v)` with `p = R.nn.softmax(x, axis=-1)` bound in the
same function, both f32 with static shapes that `schedules.softmax_matmul.supported` accepts,
becomes `y = call_tir(softmax_matmul, (x, v))` under the same name: the kernel computes the
same softmax stages and the same matmul reduction order as the two separate kernels, so
results are bit-identical (tests/test_softmax_matmul.py). When the matmul's only use is
`w = permute_dims(y)` swapping axes -3 and -2 (attention merging its heads back), the kernel
writes that layout, bound under `w`'s name (BERT block: the next quantize 37 -> 25 us, the
kernel unchanged). The values' transpose (heads split off) is not absorbed: reading `v` in
place, 3 KiB apart per row, made the kernel ~40% slower than the 27 us copy it saves. The
softmax binding itself is left in place; when nothing else uses it, dead-code elimination
removes it. Other bindings are untouched. `fused` lists (matmul var, softmax var) per rewrite; `refused` (var, reason) for
each f32 matmul of a softmax that did not qualify, so the report can say why.
"""
from __future__ import annotations

import tvm
from tvm import relax

from ..schedules import softmax_matmul
from ._common import DataflowMutator, loose_dtype, loose_shape, op_name, raw_attr


@relax.expr_functor.mutator
class FuseSoftmaxMatmul(DataflowMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.fused: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.users: dict = {}
        self.absorbed: set = set()

    def begin_function(self, gv, func) -> bool:
        self.users = _users(func)
        self.absorbed = set()
        return True

    def _head_swap_of(self, var):
        """The binding `w = permute_dims(var, swap of axes -3, -2)` when it is `var`'s only
        use, else None."""
        uses = self.users.get(var, [])
        if len(uses) != 1 or uses[0] is None or not _is_head_swap(uses[0].value):
            return None
        return uses[0]

    def _softmax_input(self, p):
        """x of `p = softmax(x, axis=-1)`, or None."""
        if not isinstance(p, relax.Var):
            return None
        bound = self.lookup_binding(p)
        if not isinstance(bound, relax.Call) or op_name(bound) != "relax.nn.softmax":
            return None
        x = bound.args[0]
        rank = len(loose_shape(x) or ())
        axis = int(raw_attr(bound, "axis", -1))
        return x if rank and axis % rank == rank - 1 else None

    def visit_var_binding_(self, binding):
        if binding.var in self.absorbed:  # computed by the fused kernel already
            return
        val = binding.value
        if not (isinstance(val, relax.Call) and op_name(val) == "relax.matmul"):
            super().visit_var_binding_(binding)
            return
        p, v = (self.visit_expr(a) for a in val.args)
        x = self._softmax_input(p)
        if x is None:
            super().visit_var_binding_(binding)
            return
        if not all(loose_dtype(e) == "float32" for e in (x, v, binding.var)):
            why = "not f32"
        else:
            why = softmax_matmul.supported(loose_shape(x), loose_shape(v))
        if why:
            self.refused.append((binding.var.name, why))
            super().visit_var_binding_(binding)
            return
        out_swap = self._head_swap_of(binding.var)
        call = self.builder_.call_te(softmax_matmul.softmax_matmul_te, x, v,
                                     out_swap is not None,
                                     primfunc_name_hint=softmax_matmul.BLOCK)
        self.fused.append((binding.var.name, p.name))
        if out_swap is None:
            self.bind_under(binding.var, call)
        else:  # the kernel writes the permuted layout: bound under the permute's name
            self.absorbed.add(out_swap.var)
            self.bind_under(out_swap.var, call)


def _is_head_swap(expr) -> bool:
    if not (isinstance(expr, relax.Call) and op_name(expr) == "relax.permute_dims"):
        return False
    rank = len(loose_shape(expr.args[0]) or ())
    axes = raw_attr(expr, "axes", None)
    if rank < 3 or axes is None:
        return False
    swap = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    return [int(a) for a in axes] == swap


def _users(func) -> dict:
    """{var: [bindings that use it]} over the function's blocks (and the return value)."""
    users: dict = {}
    for blk in func.body.blocks:
        for b in blk.bindings:
            for v in relax.analysis.free_vars(b.value):
                users.setdefault(v, []).append(b)
    for v in relax.analysis.free_vars(func.body.body):
        users.setdefault(v, []).append(None)
    return users


def fuse_softmax_matmul(mod: tvm.IRModule):
    """Returns (module, [(matmul var, softmax var)], [(matmul var, reason not fused)])."""
    rw = FuseSoftmaxMatmul(mod)
    out = rw.run()
    if rw.fused:
        out = relax.transform.DeadCodeElimination()(out)
    return out, rw.fused, rw.refused


@tvm.transform.module_pass(opt_level=0, name="qcompile.FuseSoftmaxMatmul")
class FuseSoftmaxMatmulPass:
    """The module pass form of `fuse_softmax_matmul` (for `codegen`'s pass list)."""

    def transform_module(self, mod, _ctx):
        return fuse_softmax_matmul(mod)[0]
