"""x86 int8 dot-product tensor intrinsics, registered under qcompile's own names.

One intrinsic computes, for one block of `lanes` output channels and `reduce` = 4 input
channels, `C[i] += sum_k i32(A[k]) * i32(B[i, k])` with A u8 (activations), B the packed
weight block and C s32 accumulators. Which intrinsic a target uses comes from the
`[int8] dot_product` / `saturation` fields of its `targets/*.toml` (see `select`), never from
its name.

Variants (`DotIntrin.variant`):

* ``vnni``  -- `vpdpbusd` (AVX-512 VNNI on zmm, AVX-VNNI on ymm): exact, s8 weight blocks
  `[lanes, 4]`. LLVM 22 types the intrinsic `(<N x i32>, <4N x i8>, <4N x i8>)`; the wheel's
  own `dot_16x4_vnni` passes three i32 vectors and fails LLVM verification, so we do not use it.
* ``widen16`` -- exact without VNNI: weights packed as s16 (sign-extended once at compile
  time) in the block `[2, lanes, 2]` = `[k // 2, i, k % 2]`; the activations are read as
  s16 (the kernel's padding/copy stage widened them), each s16 pair is broadcast as one
  32-bit word and two `vpmaddwd` (s16 x s16 -> s32) give the four-product sum. No s16
  intermediate sum exists, so any u8 x s8 input is exact.
* ``widen`` -- the same without the s16 copy of the activations: weights `[2, lanes, 2]` =
  `[k % 2, i, k // 2]`, the broadcast u8x4 is split into its even and odd bytes (`and 0xff`,
  `shift 8`: zero-extended s16 words) in registers. Better when the copy is not free (a 1x1
  conv without padding, see `s16_activations_pay_off`). On Zen 3 the s16 `vpmaddwd` runs at
  ~0.8x the rate of the saturating pair below.
* ``fast``  -- `vpmaddubsw` (u8 x s8 -> s16 pair sums, **saturating**) + `vpmaddwd` by ones.
  Exact only when no pair sum can leave [-32768, 32767]; `weights_fit_s16_pairs()` proves
  that from the constant weights (e.g. OpenVINO-style 7-bit weights) and the dispatch uses
  this variant only then.

Every buffer declares explicit strides, so tensorizing a window of a weight that was not
packed into this block layout is a build error instead of silently wrong results.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

REDUCE = 4  # u8*s8 products summed into one s32 lane by every variant (packing granularity)

_VNNI = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}
# AVX-VNNI has no intrinsic of its own in LLVM: llvm.x86.avx512.vpdpbusd.256 selects the
# VEX-encoded `{vex} vpdpbusd` when the target has +avxvnni but not +avx512vnni/+avx512vl.
_PMADDUBSW = {16: "llvm.x86.avx512.pmaddubs.w.512", 8: "llvm.x86.avx2.pmadd.ub.sw",
              4: "llvm.x86.ssse3.pmadd.ub.sw.128"}
_PMADDWD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd",
            4: "llvm.x86.sse2.pmadd.wd"}


@dataclasses.dataclass(frozen=True)
class DotIntrin:
    """A registered dot-product intrinsic and the weight block layout it expects."""

    name: str            # TensorIntrin registry name
    kind: str            # the targets/*.toml `dot_product` value it implements
    variant: str         # "vnni" | "widen" | "fast"
    lanes: int           # s32 outputs per call
    weight_dtype: str    # dtype of the packed weight block ("int8" or "int16")
    exact: bool          # exact for every u8 x s8 input

    reduce = REDUCE

    @property
    def act_dtype(self) -> str:
        """dtype the activations are read in (widen16 reads them pre-widened to s16)."""
        return "int16" if self.variant == "widen16" else "uint8"

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one packed weight block (the trailing dims of every packed weight)."""
        if self.variant in ("widen", "widen16"):
            return (2, self.lanes, 2)
        return (self.lanes, REDUCE)

    def block_index(self, i, k):
        """Index into the packed block of output lane `i`, reduction element `k` (TE/TIR)."""
        if self.variant == "widen":
            return (k % 2, i, k // 2)
        if self.variant == "widen16":
            return (k // 2, i, k % 2)
        return (i, k)

    def pack_blocks(self, w: np.ndarray) -> np.ndarray:
        """`w[..., lanes, 4]` (int) -> `w[..., *block_shape]` in `weight_dtype`."""
        w = np.asarray(w)
        assert w.shape[-2:] == (self.lanes, REDUCE), w.shape
        if self.variant in ("widen", "widen16"):
            lead = w.shape[:-2]
            w = w.reshape(*lead, self.lanes, 2, 2)
            nd = len(lead)
            if self.variant == "widen":  # [..., i, (pair, parity)] -> [..., parity, i, pair]
                w = w.transpose(*range(nd), nd + 2, nd, nd + 1)
            else:  # [..., i, (pair, parity)] -> [..., pair, i, parity]
                w = w.transpose(*range(nd), nd + 1, nd, nd + 2)
        return np.ascontiguousarray(w.astype(self.weight_dtype))


def weights_fit_s16_pairs(w_blocks: np.ndarray) -> bool:
    """True when `vpmaddubsw` cannot saturate for any u8 activation with these weights.

    `w_blocks[..., lanes, 4]` are the s8 blocks in the order `vpmaddubsw` consumes them: each
    s16 result is `a0*w0 + a1*w1` over adjacent k pairs. With a in [0, 255] its extremes are
    `255 * sum(positive w)` and `255 * sum(negative w)`, which fit s16 exactly when the pair's
    positive part is <= 128 and its negative part >= -128 (`|w0| + |w1| <= 128` suffices).
    """
    w = np.asarray(w_blocks, dtype=np.int64)
    pairs = w.reshape(*w.shape[:-1], w.shape[-1] // 2, 2)
    pos = np.clip(pairs, 0, None).sum(-1) * 255
    neg = np.clip(pairs, None, 0).sum(-1) * 255
    return bool((pos <= 32767).all() and (neg >= -32768).all())


def _desc(lanes: int, block: tuple[int, ...], wdtype: str, variant: str):
    from tvm.script import tirx as T

    bstrides = tuple(int(np.prod(block[i + 1:])) for i in range(len(block)))
    if variant == "widen16":
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle):
            A = T.match_buffer(a, (4,), "int16", strides=(1,), offset_factor=1)
            B = T.match_buffer(b, block, wdtype, strides=bstrides, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast(
                            "int32", B[vk // 2, vi, vk % 2])
        return desc
    if variant == "widen":
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle):
            A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1)
            B = T.match_buffer(b, block, wdtype, strides=bstrides, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast(
                            "int32", B[vk % 2, vi, vk // 2])
        return desc

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1)
        B = T.match_buffer(b, block, wdtype, strides=bstrides, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])
    return desc


def _impl(lanes: int, variant: str):
    from tvm.script import tirx as T

    i32v = f"int32x{lanes}"
    i16v = f"int16x{2 * lanes}"
    u16v = f"uint16x{2 * lanes}"
    i8v = f"int8x{4 * lanes}"
    if variant == "vnni":
        llvm = _VNNI[lanes]

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle):
            A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), "int8", strides=(4, 1), offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a32 = T.reinterpret("int32", A.vload([0], "uint8x4"))
                C[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                    i32v, llvm, C.vload([0], i32v),
                    T.reinterpret(i8v, T.broadcast(a32, lanes)), B.vload([0, 0], i8v))
        return impl

    madd = _PMADDWD[lanes]
    if variant == "fast":
        maddubs = _PMADDUBSW[lanes]

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle):
            A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), "int8", strides=(4, 1), offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a32 = T.reinterpret("int32", A.vload([0], "uint8x4"))
                pairs = T.call_llvm_pure_intrin(
                    i16v, maddubs, T.reinterpret(i8v, T.broadcast(a32, lanes)),
                    B.vload([0, 0], i8v))
                C[T.ramp(0, 1, lanes)] = C.vload([0], i32v) + T.call_llvm_pure_intrin(
                    i32v, madd, pairs, T.broadcast(T.int16(1), 2 * lanes))
        return impl

    if variant == "widen16":
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle):
            A = T.match_buffer(a, (4,), "int16", strides=(1,), offset_factor=1)
            B = T.match_buffer(b, (2, lanes, 2), "int16", strides=(2 * lanes, 2, 1),
                               offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
                T.writes(C[0:lanes])
                a01 = T.reinterpret("int32", A.vload([0], "int16x2"))
                a23 = T.reinterpret("int32", A.vload([2], "int16x2"))
                C[T.ramp(0, 1, lanes)] = C.vload([0], i32v) + (
                    T.call_llvm_pure_intrin(i32v, madd, T.reinterpret(i16v, T.broadcast(a01, lanes)),
                                            B.vload([0, 0, 0], i16v))
                    + T.call_llvm_pure_intrin(i32v, madd,
                                              T.reinterpret(i16v, T.broadcast(a23, lanes)),
                                              B.vload([1, 0, 0], i16v)))
        return impl

    assert variant == "widen", variant

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (4,), "uint8", strides=(1,), offset_factor=1)
        B = T.match_buffer(b, (2, lanes, 2), "int16", strides=(2 * lanes, 2, 1),
                           offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
            T.writes(C[0:lanes])
            a32 = T.reinterpret("int32", A.vload([0], "uint8x4"))
            words = T.reinterpret(u16v, T.broadcast(a32, lanes))
            even = T.reinterpret(i16v, words & T.broadcast(T.uint16(255), 2 * lanes))
            odd = T.reinterpret(i16v, words >> T.broadcast(T.uint16(8), 2 * lanes))
            C[T.ramp(0, 1, lanes)] = C.vload([0], i32v) + (
                T.call_llvm_pure_intrin(i32v, madd, even, B.vload([0, 0, 0], i16v))
                + T.call_llvm_pure_intrin(i32v, madd, odd, B.vload([1, 0, 0], i16v)))
    return impl


@dataclasses.dataclass(frozen=True)
class DotKind:
    """What a target file's `[int8] dot_product` names: the instruction's s32 lanes, and
    whether it multiplies u8 by s8 into s32 in one step (VNNI `vpdpbusd`: exact, one
    variant) or through a saturating s16 pair sum (`vpmaddubsw`: the exact widened variants
    and the saturating `fast` one)."""

    lanes: int
    one_step: bool

    @property
    def variants(self) -> tuple[str, ...]:
        return ("vnni",) if self.one_step else ("widen", "widen16", "fast")


DOT_KINDS = {"vpdpbusd.512": DotKind(16, True), "vpdpbusd.256": DotKind(8, True),
             "pmaddubsw.512": DotKind(16, False), "pmaddubsw.256": DotKind(8, False),
             "pmaddubsw.128": DotKind(4, False)}


def dot_kind(kind: str) -> DotKind:
    if kind not in DOT_KINDS:
        raise ValueError(f"no x86 int8 intrinsic for dot_product {kind!r} "
                         f"(known: {', '.join(sorted(DOT_KINDS))})")
    return DOT_KINDS[kind]


def intrin_name(kind: str, variant: str) -> str:
    return f"qcompile.x86.{kind}" + ("" if variant in ("vnni", "fast") else f".{variant}")


@functools.lru_cache(maxsize=None)
def get(kind: str, variant: str) -> DotIntrin:
    """The intrinsic for a `dot_product` kind and variant, registered on first use."""
    from tvm.s_tir import TensorIntrin

    dk = dot_kind(kind)
    lanes = dk.lanes
    if variant not in dk.variants:
        raise ValueError(f"dot_product {kind!r} has no {variant!r} variant")
    info = DotIntrin(name=intrin_name(kind, variant), kind=kind, variant=variant, lanes=lanes,
                     weight_dtype="int16" if variant.startswith("widen") else "int8",
                     exact=variant != "fast")
    desc = _desc(lanes, info.block_shape, info.weight_dtype, variant)
    TensorIntrin.register(info.name, desc, _impl(lanes, variant), override=True)
    return info


# ----------------------------------------------------------------- depthwise intrinsics
@dataclasses.dataclass(frozen=True)
class DepthwiseIntrin:
    """One multiply-accumulate per s32 lane for the depthwise template: `C[l] += A[l] * B[l]`
    over `lanes` channels, A = u8 activations zero-extended to s32 (by the kernel's padding
    stage), B = s8 weights sign-extended to s32 (packed once). In one instruction per tap:

    * ``vnni``: `vpdpbusd(C, A, B)` -- each s32 lane of A holds the bytes (a, 0, 0, 0) and of
      B (w, s, s, s): the four-byte dot product is `a * w` exactly;
    * ``pmaddwd`` (targets without VNNI): `vpmaddwd(A, B)` -- the s16 halves are (a, 0) and
      (w, s): `a * w + 0`, exact (no saturation: one product per pair), then `vpaddd`.

    Versus forming the product in s16 and widening it (4 instructions per tap and 16
    channels), this is 1 (VNNI) or 2."""

    name: str
    kind: str
    variant: str
    lanes: int
    exact: bool = True


def _dw_funcs(lanes: int, vnni: bool):
    from tvm import tirx
    from tvm.script import tirx as T

    i32v = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (lanes,), "int32", strides=(1,), offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int32", strides=(1,), offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            for i in T.serial(lanes):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = C[vi] + A[vi] * B[vi]

    if vnni:
        i8v = f"int8x{4 * lanes}"

        def mac(c, a, b):  # vpdpbusd(C, A, B): the four-byte dot product is a * w
            return tirx.call_llvm_pure_intrin(i32v, _VNNI[lanes], c, tirx.reinterpret(i8v, a),
                                              tirx.reinterpret(i8v, b))
    else:
        i16v = f"int16x{2 * lanes}"

        def mac(c, a, b):  # C + vpmaddwd(A, B): the s16 pairs give a * w + 0
            return c + tirx.call_llvm_pure_intrin(i32v, _PMADDWD[lanes],
                                                  tirx.reinterpret(i16v, a),
                                                  tirx.reinterpret(i16v, b))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (lanes,), "int32", strides=(1,), offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int32", strides=(1,), offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", strides=(1,), offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(0, 1, lanes)] = mac(C.vload([0], i32v), A.vload([0], i32v),
                                         B.vload([0], i32v))

    return desc, impl


@functools.lru_cache(maxsize=None)
def depthwise(kind: str) -> DepthwiseIntrin:
    """The depthwise multiply-accumulate intrinsic for a `dot_product` kind (registered on
    first use): `vpdpbusd` where the kind is VNNI, `vpmaddwd` otherwise."""
    from tvm.s_tir import TensorIntrin

    dk = dot_kind(kind)
    lanes, vnni = dk.lanes, dk.one_step
    info = DepthwiseIntrin(name=f"qcompile.x86.dw.{kind}", kind=kind,
                           variant="vnni" if vnni else "pmaddwd", lanes=lanes)
    desc, impl = _dw_funcs(lanes, vnni)
    TensorIntrin.register(info.name, desc, impl, override=True)
    return info


def register_all() -> list:
    """Register every intrinsic (call before opening a tuning database that names them)."""
    out = []
    for kind, dk in DOT_KINDS.items():
        for variant in dk.variants:
            out.append(get(kind, variant))
        out.append(depthwise(kind))
    return out


def s16_activations_pay_off(copies_input: bool, reuse: int) -> bool:
    """Whether a widened kernel should read s16 activations (`widen16`): its input must be
    widened by a copy, which is free when the kernel copies its input anyway (spatial or K
    padding) and cheap when every input element feeds >= 256 outputs (output channels x
    taps). Measured on Zen 3: 1x1 256->64 @56 runs 1.35x faster with `widen`, padded 3x3
    convs and dense 768x768 1.1-1.15x faster with `widen16`."""
    return copies_input or reuse >= 256


def select(int8_cap, weights_safe: bool = False, s16_activations: bool = True,
           exact_variant: str | None = None) -> DotIntrin:
    """The intrinsic for a target's `[int8]` capability (`TargetSpec.int8`).

    `saturation = "none"` (VNNI) -> the exact `vpdpbusd`. `saturation = "widen"` -> the
    faster saturating `fast` variant when `weights_safe` (the caller proved
    `weights_fit_s16_pairs` for the constant weights), else an exact one: `widen16` (reads
    activations pre-widened to s16 by the kernel's input copy) when `s16_activations`, else
    `widen` (widens the u8 bytes in registers); `exact_variant` forces one of the two."""
    kind = int8_cap.dot_product
    if dot_kind(kind).one_step:
        variant = "vnni"
    elif int8_cap.saturation == "widen":
        if weights_safe:
            variant = "fast"
        else:
            variant = exact_variant or ("widen16" if s16_activations else "widen")
            if variant not in ("widen", "widen16"):
                raise ValueError(f"exact_variant must be 'widen' or 'widen16', not {variant!r}")
    elif int8_cap.saturation == "none":
        raise ValueError(f"dot_product {kind!r} saturates; its target must say "
                         "saturation = \"widen\"")
    else:
        raise ValueError(f"unknown saturation policy {int8_cap.saturation!r}")
    info = get(kind, variant)
    if info.lanes != int8_cap.lanes:
        raise ValueError(f"dot_product {kind!r} has {info.lanes} lanes, target says "
                         f"{int8_cap.lanes}")
    return info


def by_name(name: str):
    """The `DotIntrin` (or `DepthwiseIntrin`) registered under `name` (registering it if
    needed)."""
    for kind, dk in DOT_KINDS.items():
        if name == f"qcompile.x86.dw.{kind}":
            return depthwise(kind)
        for variant in dk.variants:
            if intrin_name(kind, variant) == name:
                return get(kind, variant)
    raise ValueError(f"unknown qcompile x86 intrinsic {name!r}")
