"""Workarounds for TVM 0.27 behaviour that costs qcompile time or correctness.

`install()` is idempotent and runs when qcompile is imported.

1. TVMScript parsing is quadratic in loaded modules: for every parsed function the parser
   (via `inspect.getsourcefile` / `inspect.findsource`) calls `inspect.getmodule(obj, name)`
   with a file name that is not on disk ("<ast>", "<frozen ...>"); the stdlib then rescans
   every entry of `sys.modules` and caches nothing, because the answer is None. Importing
   `tvm.s_tir.tensor_intrin` (which MetaSchedule does in every TuneContext and in every
   builder worker) took 31-33 s here; with the answer cached per file name it takes ~6 s.
   The cache maps a file name to its module (or to None) exactly as the stdlib would.
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
