"""The OpenCL int8 dot product: a tensor intrinsic + the OpenCL C helper it calls.

TVM's OpenCL codegen has no int8 dot product. `DOT4` is a tensor intrinsic for

    C[0] += i32(A[0]) * i32(B[0]) + ... + i32(A[3]) * i32(B[3])      (A u8, B s8, C s32)

whose implementation is one call of the extern helper `qc_dot4_u8s8(uchar4, char4)` on two
4-byte vector loads (`vload4`). The helper is defined in `PREAMBLE`, which the
`tvm_callback_opencl_postproc` hook (`register()`) puts in front of every generated kernel:

* where the OpenCL compiler defines `cl_khr_integer_dot_product` (Intel's GPU driver does),
  it is the extension's `dot(uchar4, char4)` (one DP4A instruction on Xe);
* elsewhere (PoCL, older drivers) it is the `char4` fallback: widen both to `int4`, multiply,
  sum the lanes. Exact: |255 * -128| * 4 < 2^31;
* `-D QCOMPILE_NO_DOT_PRODUCT` forces the fallback (the runner passes it when the device
  does not report the 4x8-bit capability; tests use it to run both paths).

The preamble also turns floating-point contraction off (`FP_CONTRACT OFF`): OpenCL C allows a
compiler to fuse `a * b + c` into one FMA, which would break the bit-exactness of the
requantize / qadd epilogues against the numpy reference (integer-ir.md: "each f32 op rounded
separately"). TIR `round` is emitted as `rint` (round-half-even), as the reference needs.

`llvm.arithmetic.fence` calls (qcompile.ops fences f32 products against LLVM's contraction
on the CPU path) have no OpenCL spelling; `register()` installs an OpenCL lowering that drops
the fence and keeps its operand, which `FP_CONTRACT OFF` already protects.

Every operand declares strides (1,), so only a contiguous 4-byte group can be tensorized:
a template that forgot to pack its operand fails to build instead of computing garbage.
Variants exist per storage scope of A and B (`global`, `shared`, `local`), because
tensorize matches buffer scopes exactly.
"""
from __future__ import annotations

import functools

HELPER = "qc_dot4_u8s8"
GUARD = "QCOMPILE_OPENCL_PREAMBLE"
PREAMBLE = f"""#ifndef {GUARD}
#define {GUARD}
#pragma OPENCL FP_CONTRACT OFF
#if defined(cl_khr_integer_dot_product) && !defined(QCOMPILE_NO_DOT_PRODUCT)
#pragma OPENCL EXTENSION cl_khr_integer_dot_product : enable
/* cl_khr_integer_dot_product: one 4x8-bit dot product instruction */
#define QCOMPILE_DOT_PRODUCT 1
inline int {HELPER}(uchar4 a, char4 b) {{ return dot(a, b); }}
#else
/* char4 fallback: exact (4 * 255 * 128 < 2^31) */
inline int {HELPER}(uchar4 a, char4 b) {{
  int4 p = convert_int4(a) * convert_int4(b);
  return (p.x + p.y) + (p.z + p.w);
}}
#endif
#endif
"""
SCOPES = ("global", "shared", "local")


def intrin_name(a_scope: str = "global", b_scope: str = "global") -> str:
    return f"qcompile_opencl_dot4_u8s8_{a_scope}_{b_scope}"


def postproc(code: str, target=None) -> str:
    """`tvm_callback_opencl_postproc`: prepend the preamble to each kernel's source."""
    code = str(code)
    if GUARD in code:
        return code
    return PREAMBLE + code


def _desc_impl(a_scope: str, b_scope: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1, scope=a_scope)
        B = T.match_buffer(b, (4,), "int8", strides=(1,), offset_factor=1, scope=b_scope)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1, scope=a_scope)
        B = T.match_buffer(b, (4,), "int8", strides=(1,), offset_factor=1, scope=b_scope)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] = C[0] + T.call_pure_extern("int32", HELPER, A.vload([0], "uint8x4"),
                                             B.vload([0], "int8x4"))

    return desc, impl


def _lower_llvm_intrin(call):
    """OpenCL lowering of `call_llvm_pure_intrin`: `llvm.arithmetic.fence(x)` -> `x`."""
    args = list(call.args)
    if len(args) == 2 and int(args[0].value) == _fence_id():
        return args[1]
    return call


@functools.lru_cache(maxsize=None)
def _fence_id() -> int:
    from tvm.target import codegen

    return int(codegen.llvm_lookup_intrinsic_id("llvm.arithmetic.fence"))


@functools.lru_cache(maxsize=None)
def register() -> tuple[str, ...]:
    """Register the postproc hook, the fence lowering and the DOT4 intrinsics (idempotent)."""
    import tvm
    from tvm.s_tir import TensorIntrin
    from tvm.tirx.op import register_intrin_lowering

    tvm.register_global_func("tvm_callback_opencl_postproc", postproc, override=True)
    register_intrin_lowering("tirx.call_llvm_pure_intrin", "opencl", f=_lower_llvm_intrin,
                             level=99)
    names = []
    for a_scope in SCOPES:
        for b_scope in SCOPES:
            name = intrin_name(a_scope, b_scope)
            desc, impl = _desc_impl(a_scope, b_scope)
            try:
                TensorIntrin.register(name, desc, impl, override=True)
            except TypeError:
                TensorIntrin.register(name, desc, impl)
            names.append(name)
    return tuple(names)
