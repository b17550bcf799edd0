"""x86 int8 kernels (see docs/kernels.md).

- `intrinsics`: the dot-product tensor intrinsics (vpdpbusd; vpmaddubsw widened/fast) and
  their selection from `TargetSpec.int8`.
- `packing`: compile-time packing of weights and per-channel constants (numpy).
- `compute`: TE computes of the packed ops (conv2d NCHW[x]c, depthwise, dense,
  batch-matmul), their main block annotated with `schedule_rule` and the intrinsic.
- `winograd`: exact integer Winograd F(2x2, 3x3) for 3x3 stride-1 convs on targets without
  VNNI (weight transform, exactness bound, TE compute).
- `region_ops`: NCHW <-> NCHW[x]c border transforms and the FMA-fenced quantized add.
- `schedule`: schedules of fused PrimFuncs containing those blocks: the deterministic
  default (`apply_default_schedules`) and the MetaSchedule custom rules
  (`s_tir.meta_schedule.cpu.qcompile_x86_*`, `register_rules`).
- `lower`: fusion + schedules of a dispatched module (kernel tests).
- `tuning`: MetaSchedule helpers (seed a database with the default schedule, tune a kernel).

The Relax side is `qcompile.relay_passes.x86_int8_dispatch`.
"""
