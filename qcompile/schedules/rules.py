"""MetaSchedule custom rules of qcompile's kernel templates, for every target family.

A template's main block carries a `schedule_rule` annotation; MetaSchedule's
`ApplyCustomRule` looks up the global function `s_tir.meta_schedule.<target key>.<rule>`
(the llvm target key is `cpu`, OpenCL's `opencl`). TVM replays every record's trace when it
opens a tuning database, so the rules (and the intrinsics they tensorize with) must be
registered first.
"""
from __future__ import annotations

from typing import Callable, Iterable


def register_custom_rules(target_key: str, rules: Iterable[str], fn: Callable
                          ) -> tuple[str, ...]:
    """Register `fn` as `s_tir.meta_schedule.<target_key>.<rule>` for each rule (idempotent);
    returns the registered names."""
    import tvm

    names = tuple(f"s_tir.meta_schedule.{target_key}.{rule}" for rule in rules)
    for name in names:
        tvm.register_global_func(name, fn, override=True)
    return names
