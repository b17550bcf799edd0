"""The OpenCL (Intel GPU) back end's host side: lowering, artifact, tuning.

The TVM wheel emits OpenCL C but has no OpenCL runtime (DESIGN §5), so qcompile ships its
own: `lower` turns scheduled PrimFuncs into OpenCL source + launch lists, `program` reads the
host call sequence from Relax `main`, `artifact` writes the build directory that
`qcompile.runtimes.opencl` runs through pyopencl, `opencl` holds the pyopencl plumbing, and
`tuning` gives MetaSchedule a builder and runners (local and RPC) that measure candidates
through the same OpenCL path. Kernel templates live in `qcompile.schedules.opencl`.
"""
