"""Workarounds for TVM 0.27 behaviour that costs qcompile time or correctness.

`install()` is idempotent and runs when qcompile is imported.

1. TVMScript parsing is quadratic in loaded modules: for every parsed function the parser
   (via `inspect.getsourcefile` / `inspect.findsource`) calls `inspect.getmodule(obj, name)`
   with a file name that is not on disk ("<ast>", "<frozen ...>"); the stdlib then rescans
   every entry of `sys.modules` and caches nothing, because the answer is None. Importing
   `tvm.s_tir.tensor_intrin` (which MetaSchedule does in every TuneContext and in every
   builder worker) took 31-33 s here; with the answer cached per file name it takes ~6 s.
   The cache maps a file name to its module (or to None) exactly as the stdlib would.

2. TVM's CPU thread pool, without TVM_NUM_THREADS / OMP_NUM_THREADS, uses half of
   `std::thread::hardware_concurrency()` on x86 (it assumes 2-way hyper-threading). On a
   machine without SMT (this 2-core VM, most cloud vCPUs pinned to cores) every compiled
   model then ran on one thread: ResNet-50 int8 85 ms instead of 44 ms. `set_default_threads()`
   sets TVM_NUM_THREADS to the physical core count (psutil) unless the user set it, before
   the pool exists; MetaSchedule's measurement subprocesses inherit it, so tuning measures
   with the same threads the model will run with. The build records it (model.json
   `target.num-cores`); a user who already set TVM_NUM_THREADS keeps theirs.

3. `tirx.nearbyint` (what `relax.round` legalizes to: round half to even, the rounding of
   every requantize) has no `TVectorizable` attribute, unlike `tirx.round`. TIR's
   VectorizeLoop therefore turns any vectorized loop containing it into a serial scalar loop
   (`ax4_s`). LLVM's own loop vectorizer happened to re-vectorize the plain requantize, but
   not once an `llvm.arithmetic.fence` (the residual add's FMA fence) follows it: ResNet-50's
   residual-add 1x1 convs ran their whole epilogue in scalar code (1.55 ms instead of 0.21 ms
   at 64->256 @56, measured on AVX-512 VNNI). `vectorize_nearbyint()` registers the attribute
   (lowering is `llvm.nearbyint.v*`, an elementwise LLVM intrinsic, so vector calls are
   legal); `tests/test_tvm_compat.py` checks the loop stays vector. It is called where
   qcompile lowers TIR (codegen.compile_fused, the MetaSchedule builder), not at import: loading an artifact
   must not import TVM (the OpenCL runner needs none).
"""
from __future__ import annotations

import inspect

_MISS = object()
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    original = inspect.getmodule
    cache: dict = {}

    def getmodule(obj, _filename=None):
        if _filename is None:
            return original(obj)
        mod = cache.get(_filename, _MISS)
        if mod is _MISS:
            mod = original(obj, _filename)
            cache[_filename] = mod
        return mod

    getmodule.__wrapped__ = original
    inspect.getmodule = getmodule
    _installed = True


def vectorize_nearbyint() -> None:
    """Idempotent; see 3. in the module docstring."""
    import tvm

    op = tvm.ir.Op.get("tirx.nearbyint")
    if op.get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def set_default_threads() -> None:
    import os

    if os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return
    from .targets import default_num_threads

    os.environ["TVM_NUM_THREADS"] = str(default_num_threads())
