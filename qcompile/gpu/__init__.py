"""The OpenCL (Intel GPU) back end: kernel templates, lowering, artifact, runner, tuning.

The TVM wheel emits OpenCL C but has no OpenCL runtime (docs/DEVELOPING.md, TVM 0.27 facts), so qcompile ships its
own. Everything GPU lives here:

- `schedules/`: the int8 kernel templates -- `int8_dispatch` (integer IR -> templates),
  `compute` (TE computes), `schedule` (GPU schedules, MetaSchedule rules), `intrinsics`
  (the DOT4 tensor intrinsic); `schedules.schedule_module` schedules a fused module;
- `lower`: scheduled PrimFuncs -> OpenCL source + launch lists;
- `program`: the host call sequence read from Relax `main`;
- `artifact`: writes the build directory (`runtime: "opencl"`);
- `runtime`: `OpenCLModel`, which runs that directory through pyopencl without TVM;
- `opencl`: the pyopencl plumbing (device choice, build options);
- `tuning`, `remote`: MetaSchedule builder and runners (local and RPC) that measure
  candidates through the same OpenCL path.
"""
