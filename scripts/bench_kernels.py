#!/usr/bin/env python3
"""Micro-benchmark of the x86 int8 kernels (GOPS) on the host target.

For dense 128x768x768 and ResNet-50 convolutions it times the fused kernel (int8 op +
bias + requantize to u8, NCHW[L]c in/out, i.e. without region-border layout transforms):

* `int8 default` -- the deterministic default schedule (an untuned build);
* `int8 tuned`   -- after a short MetaSchedule run (`--trials N`, evolutionary search with
  the XGBoost cost model; 0 skips it);
* `fp32 ORT`     -- the same shape in fp32 through ONNX Runtime (MLAS), same thread count;

and compares them with this machine's measured peaks from a hand-written C micro-benchmark
(`vpmaddubsw+vpmaddwd` -- the saturating pair, `vpmaddwd` on s16 -- the exact widened path,
`vfmadd231ps` for fp32), compiled with the system C compiler. GOPS count one multiply and
one add per MAC. The machine is shared and noisy: compare ratios measured side by side.

    python scripts/bench_kernels.py [--target host] [--trials 32] [--only conv3x3,dense]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name: (kind, params)
SHAPES = {
    "dense 128x768x768": ("dense", dict(m=128, k=768, n=768)),
    "conv3x3 64->64 @56": ("conv", dict(ic=64, oc=64, hw=56, k=3, s=1, p=1)),
    "conv1x1 256->64 @56": ("conv", dict(ic=256, oc=64, hw=56, k=1, s=1, p=0)),
    "conv7x7 stem 3->64 @224 s2": ("conv", dict(ic=3, oc=64, hw=224, k=7, s=2, p=3)),
    "conv3x3 128->128 @56 s2": ("conv", dict(ic=128, oc=128, hw=56, k=3, s=2, p=1)),
    "conv1x1 64->256 @56": ("conv", dict(ic=64, oc=256, hw=56, k=1, s=1, p=0)),
    "conv1x1 256->512 @56 s2 (down)": ("conv", dict(ic=256, oc=512, hw=56, k=1, s=2, p=0)),
    "conv3x3 256->256 @14": ("conv", dict(ic=256, oc=256, hw=14, k=3, s=1, p=1)),
    "conv3x3 512->512 @7": ("conv", dict(ic=512, oc=512, hw=7, k=3, s=1, p=1)),
    "conv1x1 96->24 @56 (mbv2)": ("conv", dict(ic=96, oc=24, hw=56, k=1, s=1, p=0)),
    "dense 128x768x3072 (ffn1)": ("dense", dict(m=128, k=768, n=3072)),
    "dense 128x3072x768 (ffn2)": ("dense", dict(m=128, k=3072, n=768)),
}

PEAK_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
/* 8 independent accumulators; operands in registers; asm so nothing is folded away */
#define LOOP(body) __asm__ volatile("vpxor %%ymm13,%%ymm13,%%ymm13\n vpxor %%ymm14,%%ymm14,%%ymm14\n" \
  "vpcmpeqw %%ymm15,%%ymm15,%%ymm15\n 1:\n" body "dec %0\n jnz 1b\n" : "+r"(n) :: "cc", \
  "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm13","xmm14","xmm15")
#define PAIR(t, a) "vpmaddubsw %%ymm14,%%ymm13,%%ymm" #t "\n vpmaddwd %%ymm15,%%ymm" #t ",%%ymm" #t "\n vpaddd %%ymm" #t ",%%ymm" #a ",%%ymm" #a "\n"
#define WIDE(t, a) "vpmaddwd %%ymm14,%%ymm13,%%ymm" #t "\n vpaddd %%ymm" #t ",%%ymm" #a ",%%ymm" #a "\n"
#define FMA(a) "vfmadd231ps %%ymm14,%%ymm13,%%ymm" #a "\n"
static void k_pair(long n){LOOP(PAIR(8,0) PAIR(9,1) PAIR(10,2) PAIR(11,3) PAIR(8,4) PAIR(9,5) PAIR(10,6) PAIR(11,7));}
static void k_wide(long n){LOOP(WIDE(8,0) WIDE(9,1) WIDE(10,2) WIDE(11,3) WIDE(8,4) WIDE(9,5) WIDE(10,6) WIDE(11,7));}
static void k_fma(long n){LOOP(FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9) FMA(10) FMA(11));}
typedef struct {int kind; long n; double t;} job;
static void* run(void* p){job* j=p; double t0=now();
  if(j->kind==0) k_pair(j->n); else if(j->kind==1) k_wide(j->n); else k_fma(j->n);
  j->t=now()-t0; return 0;}
/* GOPS (2 ops per MAC) of kind 0 pair / 1 widened / 2 fp32 fma, over `threads` threads */
double peak_gops(int kind, int threads, long n){
  pthread_t th[64]; job js[64]; double t=0;
  for(int i=0;i<threads;i++){js[i].kind=kind;js[i].n=n;pthread_create(&th[i],0,run,&js[i]);}
  for(int i=0;i<threads;i++){pthread_join(th[i],0); if(js[i].t>t)t=js[i].t;}
  double macs_per_iter = kind==0 ? 8*32 : (kind==1 ? 8*16 : 12*8);
  return 2.0*macs_per_iter*n*threads/t/1e9;
}
"""


# AVX-512 peaks (zmm), built and run only where the CPU has the flags: 24 independent
# accumulators (vpdpbusd's latency x its throughput needs >= 10 on current cores)
PEAK512_C = r"""
#include <pthread.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define R3(m,a,b,c) m(a) m(b) m(c)
#define ACC24(m) R3(m,0,1,2) R3(m,3,4,5) R3(m,6,7,8) R3(m,9,10,11) R3(m,12,13,14) R3(m,15,16,17) R3(m,18,19,20) R3(m,21,22,23)
#define VNNI(a) "vpdpbusd %%zmm30,%%zmm31,%%zmm" #a "\n"
#define PAIR(a) "vpmaddubsw %%zmm30,%%zmm31,%%zmm29\n vpmaddwd %%zmm28,%%zmm29,%%zmm29\n vpaddd %%zmm29,%%zmm" #a ",%%zmm" #a "\n"
#define CLOB "cc","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21","xmm22","xmm23","xmm28","xmm29","xmm30","xmm31"
#define LOOP(body) __asm__ volatile("vpxord %%zmm30,%%zmm30,%%zmm30\n vpternlogd $0xff,%%zmm31,%%zmm31,%%zmm31\n" \
  "vpternlogd $0xff,%%zmm28,%%zmm28,%%zmm28\n 1:\n" body "dec %0\n jnz 1b\n" : "+r"(n) :: CLOB)
static void k_vnni(long n){LOOP(ACC24(VNNI));}
static void k_pair(long n){LOOP(ACC24(PAIR));}
typedef struct {int kind; long n; double t;} job;
static void* run(void* p){job* j=p; double t0=now(); if(j->kind==0) k_vnni(j->n); else k_pair(j->n);
  j->t=now()-t0; return 0;}
double peak_gops(int kind, int threads, long n){
  pthread_t th[64]; job js[64]; double t=0;
  for(int i=0;i<threads;i++){js[i].kind=kind;js[i].n=n;pthread_create(&th[i],0,run,&js[i]);}
  for(int i=0;i<threads;i++){pthread_join(th[i],0); if(js[i].t>t)t=js[i].t;}
  return 2.0*24*64*n*threads/t/1e9;
}
"""
PEAK_VNNI = "int8 vpdpbusd zmm (AVX-512 VNNI)"
PEAK_PAIR512 = "int8 vpmaddubsw+vpmaddwd zmm (saturating)"
PEAK_PAIR = "int8 vpmaddubsw+vpmaddwd (saturating)"
PEAK_WIDE = "int8 vpmaddwd s16 (widened, exact)"
# the measured peak each kernel is compared with, by its intrinsic (variant, lanes)
PEAK_OF = {("vnni", 16): PEAK_VNNI, ("fast", 16): PEAK_PAIR512, ("fast", 8): PEAK_PAIR,
           ("widen", 8): PEAK_WIDE, ("widen16", 8): PEAK_WIDE}


def _build_peak(source: str, flags: list[str], tag: str):
    tmp = Path(tempfile.mkdtemp(prefix="qcompile_peak_"))
    src, lib = tmp / f"{tag}.c", tmp / f"{tag}.so"
    src.write_text(source)
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run([cc, "-O2", *flags, "-shared", "-fPIC", str(src), "-o", str(lib),
                        "-lpthread"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"(peak micro-benchmark {tag} not built: {err})")
        return None
    so = ctypes.CDLL(str(lib))
    so.peak_gops.restype = ctypes.c_double
    so.peak_gops.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return so


def measure_peaks512(threads: int) -> dict[str, float]:
    """vpdpbusd / zmm pair peaks, only where /proc/cpuinfo has the flags (else {})."""
    from qcompile.targets import cpu_flags

    flags = cpu_flags()
    if not {"avx512f", "avx512bw"} <= flags:
        return {}
    so = _build_peak(PEAK512_C, ["-mavx512f", "-mavx512bw", "-mavx512vnni"], "peak512")
    if so is None:
        return {}
    out = {PEAK_PAIR512: max(so.peak_gops(1, threads, 5_000_000) for _ in range(3))}
    if "avx512_vnni" in flags:
        out[PEAK_VNNI] = max(so.peak_gops(0, threads, 10_000_000) for _ in range(3))
    return out


def measure_peaks(threads: int) -> dict[str, float]:
    """This machine's int8/fp32 peaks from hand-written kernels (needs a C compiler): the
    AVX2 ones, and the zmm / vpdpbusd ones where the CPU has AVX-512 (VNNI)."""
    so = _build_peak(PEAK_C, ["-mavx2", "-mfma"], "peak")
    if so is None:
        return {}
    names = [PEAK_PAIR, PEAK_WIDE, "fp32 vfmadd231ps"]
    out = {}
    for kind, name in enumerate(names):
        out[name] = max(so.peak_gops(kind, threads, 20_000_000) for _ in range(3))
    out.update(measure_peaks512(threads))
    return out


# ---------------------------------------------------------------------------- kernels
def _requant(bb, acc, c_shape, channels, lanes):
    from tvm import relax

    cc = -(-channels // lanes)
    bias = relax.const(np.ones(c_shape, np.int32))
    mult = relax.const(np.full(c_shape, 1e-3, np.float32))
    y = bb.emit(relax.op.add(acc, bias))
    f = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), mult))
    f = bb.emit(relax.op.add(relax.op.round(f), relax.const(np.float32(3))))
    del cc
    return bb.emit(relax.op.astype(relax.op.clip(f, 0, 255), "uint8"))


SEVEN_BIT = False  # --weights 7bit


def int8_module(kind: str, p: dict, spec):
    """(fused, unscheduled Relax module, input arrays) of the int8 kernel + requantize.
    kind "winograd": the 3x3 stride-1 conv as exact Winograd F(2x2, 3x3) (widen16 GEMM)."""
    from tvm import relax

    from qcompile import codegen
    from qcompile.schedules.x86 import compute, intrinsics, packing, winograd

    rng = np.random.default_rng(0)
    # the kernel the dispatch would pick for this shape: exact for full-range s8 weights, the
    # saturating `fast` pair for 7-bit weights (--weights 7bit: qcompile quantize's avx2 output)
    if kind == "dense":
        s16 = intrinsics.s16_activations_pay_off(p["k"] % 4 != 0, p["n"])
    else:
        s16 = intrinsics.s16_activations_pay_off(p["p"] > 0, p["oc"] * p["k"] * p["k"])
    wlo, whi = (-64, 65) if SEVEN_BIT else (-128, 128)
    if kind == "winograd":
        info = intrinsics.get(spec.int8.dot_product, "widen16")
        cb = packing.data_block(p["ic"], info.lanes)
        x = rng.integers(0, 256, (1, p["ic"], p["hw"], p["hw"])).astype(np.uint8)
        w = rng.integers(wlo, whi, (p["oc"], p["ic"], 3, 3)).astype(np.int8)
        assert winograd.exact_bound(w) <= winograd.S32_MAX
        xc = packing.nchw_to_nchwc(x, cb)
        xv = relax.Var("x", relax.TensorType(xc.shape, "uint8"))
        occ = -(-p["oc"] // info.lanes)
        bb = relax.BlockBuilder()
        with bb.function("main", [xv]):
            with bb.dataflow():
                acc = bb.emit(bb.call_te(
                    winograd.conv2d_nchwc, xv,
                    relax.const(winograd.pack_weights(w, info, cb)), (p["p"],) * 4,
                    relax.const(np.array([0], np.int32)), info.name,
                    primfunc_name_hint="qconv2d_winograd"))
                out = bb.emit_output(_requant(bb, acc, (1, occ, 1, 1, info.lanes), p["oc"],
                                              info.lanes))
            bb.emit_func_output(out)
        return codegen.fuse(bb.get(), spec.tvm_target()), xc, info
    info = intrinsics.select(spec.int8, weights_safe=SEVEN_BIT and
                             intrinsics.weights_fit_s16_pairs(np.full((1, 4), 64)),
                             s16_activations=s16,
                             exact_variant=os.environ.get("QCOMPILE_X86_EXACT_VARIANT"))
    lanes = info.lanes
    bb = relax.BlockBuilder()
    if kind == "dense":
        x = rng.integers(0, 256, (p["m"], p["k"])).astype(np.uint8)
        w = rng.integers(wlo, whi, (p["k"], p["n"])).astype(np.int8)
        xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                acc = bb.emit(bb.call_te(compute.dense_packed, xv,
                                         relax.const(packing.pack_dense(w, info)), info.name,
                                         p["n"], primfunc_name_hint="qdense"))
                out = bb.emit_output(_requant(bb, acc, (p["n"],), p["n"], lanes))
            bb.emit_func_output(out)
    else:
        cb = packing.data_block(p["ic"], lanes)
        x = rng.integers(0, 256, (1, p["ic"], p["hw"], p["hw"])).astype(np.uint8)
        w = rng.integers(wlo, whi, (p["oc"], p["ic"], p["k"], p["k"])).astype(np.int8)
        xc = packing.nchw_to_nchwc(x, cb)
        xv = relax.Var("x", relax.TensorType(xc.shape, "uint8"))
        occ = -(-p["oc"] // lanes)
        with bb.function("main", [xv]):
            with bb.dataflow():
                pad = (p["p"],) * 4
                acc = bb.emit(bb.call_te(
                    compute.conv2d_nchwc, xv, relax.const(packing.pack_conv(w, info, cb)),
                    (p["s"], p["s"]), pad, (1, 1), 0, info.name,
                    primfunc_name_hint="qconv2d_nchwc"))
                out = bb.emit_output(_requant(bb, acc, (1, occ, 1, 1, lanes), p["oc"], lanes))
            bb.emit_func_output(out)
        x = xc
    return codegen.fuse(bb.get(), spec.tvm_target()), x, info


def ops_of(kind: str, p: dict) -> float:
    """2 x the MACs of the direct computation (a Winograd kernel's GOPS are equivalent:
    the direct conv's operations over its time)."""
    if kind == "dense":
        return 2.0 * p["m"] * p["k"] * p["n"]
    oh = (p["hw"] + 2 * p["p"] - p["k"]) // p["s"] + 1
    return 2.0 * p["oc"] * p["ic"] * p["k"] * p["k"] * oh * oh


def vm_timer(ex, args):
    """A function returning one timing (seconds per call) of the VM's main."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    targs = [tvm.runtime.tensor(a) for a in args]
    vm["main"](*targs)
    f = vm.time_evaluator("main", tvm.cpu(), number=5, repeat=1, min_repeat_ms=50)
    return lambda: min(f(*targs).results)


def int8_timers(kind, p, spec, trials: int, work_dir: Path, reuse: bool = False):
    """(timer of the default build, timer of the tuned build or None, intrinsic)."""
    import tvm

    from qcompile.schedules.x86 import schedule, tuning

    from qcompile import codegen

    fused, x, info = int8_module(kind, p, spec)
    target = spec.tvm_target()
    # the build's own pipeline (codegen.compile_fused): a plain tvm.compile re-lowers with
    # TVM's default passes, which do not keep the templates' parallel schedules
    t_def = vm_timer(codegen.compile_fused(
        fused, target, default_schedule=lambda m, _t: schedule.apply_default_schedules(m, spec)),
        [x])
    t_tuned = None
    if trials > 0:
        name = next(gv.name_hint for gv, f in fused.functions.items()
                    if isinstance(f, tvm.tirx.PrimFunc) and schedule.has_qcompile_block(f))
        kdir = work_dir / (f"{spec.name}_{kind}_" + "_".join(f"{k}{v}" for k, v in sorted(p.items())))
        if reuse and (kdir / "database_tuning_record.json").exists():
            from tvm.s_tir import meta_schedule as ms

            db = ms.database.JSONDatabase(work_dir=str(kdir))
            sch = ms.tir_integration.compile_tir(db, fused[name], target)
        else:
            kdir.mkdir(parents=True, exist_ok=True)
            sch, _ = tuning.tune_kernel(fused[name], target, str(kdir), trials)
        if sch is not None:
            tuned = fused.clone()
            tuned.update_func(tuned.get_global_var(name),
                              sch.mod["main"].with_attr("tir.is_scheduled", True)
                              .without_attr("global_symbol"))
            t_tuned = vm_timer(codegen.compile_fused(
                tuned, target,
                default_schedule=lambda m, _t: schedule.apply_default_schedules(m, spec)), [x])
    return t_def, t_tuned, info


def fp32_ort_timer(kind, p, threads: int):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    if kind == "dense":
        x = rng.random((p["m"], p["k"]), dtype=np.float32)
        w = numpy_helper.from_array(rng.random((p["k"], p["n"]), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        out_shape = [p["m"], p["n"]]
    else:
        x = rng.random((1, p["ic"], p["hw"], p["hw"]), dtype=np.float32)
        w = numpy_helper.from_array(
            rng.random((p["oc"], p["ic"], p["k"], p["k"]), dtype=np.float32), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[p["s"]] * 2,
                                pads=[p["p"]] * 4)
        oh = (p["hw"] + 2 * p["p"] - p["k"]) // p["s"] + 1
        out_shape = [1, p["oc"], oh, oh]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # ORT's pool spin-waits after each run, stealing the cores from whatever runs next
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"x": x})

    def timer():
        n, t0 = 0, time.perf_counter()
        while True:
            sess.run(None, {"x": x})
            n += 1
            if time.perf_counter() - t0 > 0.05:
                return (time.perf_counter() - t0) / n
    return timer


def main(argv=None) -> int:
    from qcompile import targets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host", help="qcompile target (default: host)")
    ap.add_argument("--trials", type=int, default=32,
                    help="MetaSchedule trials per kernel (0: default schedule only)")
    ap.add_argument("--only", default="", help="comma-separated substrings of shape names")
    ap.add_argument("--repeat", type=int, default=7,
                    help="interleaved timing rounds (the best of each variant is kept)")
    ap.add_argument("--work-dir", default=None, help="MetaSchedule work dir (default: temp)")
    ap.add_argument("--reuse-db", action="store_true",
                    help="re-measure from the tuning databases already in --work-dir")
    ap.add_argument("--weights", choices=["8bit", "7bit"], default="8bit",
                    help="weight range of the benchmarked kernels: 8bit (exact widened kernels "
                    "on avx2) or 7bit (|w| <= 64: the dispatch picks the `fast` vpmaddubsw pair)")
    args = ap.parse_args(argv)
    global SEVEN_BIT
    SEVEN_BIT = args.weights == "7bit"

    import tvm  # noqa: F401

    from qcompile.schedules.x86 import schedule

    spec = targets.resolve(args.target)
    threads = targets.default_num_threads()
    schedule.register_rules()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="qcompile_bench_"))
    print(f"target {spec.name} ({spec.int8.dot_product}, saturation={spec.int8.saturation}), "
          f"{threads} threads, MetaSchedule trials per kernel: {args.trials}")
    peaks = measure_peaks(threads)
    for name, g in peaks.items():
        print(f"  measured peak {name:42s} {g:8.1f} GOPS")
    rows = []
    only = [s for s in args.only.split(",") if s]
    shapes = dict(SHAPES)
    if spec.int8.winograd != "none":  # the 3x3 stride-1 shapes again, as Winograd
        shapes.update({f"{n} (winograd)": ("winograd", p) for n, (k, p) in SHAPES.items()
                       if k == "conv" and p["k"] == 3 and p["s"] == 1})
    for name, (kind, p) in shapes.items():
        if only and not any(o in name for o in only):
            continue
        ops = ops_of(kind, p)
        timers = list(int8_timers(kind, p, spec, args.trials, work_dir, args.reuse_db))
        info = timers.pop()
        timers.append(fp32_ort_timer("dense" if kind == "dense" else "conv", p, threads))
        best = [float("inf")] * len(timers)
        for r in range(args.repeat):  # interleaved, rotating order: all see the same load
            for j in range(len(timers)):
                i = (j + r) % len(timers)
                if timers[i] is not None:
                    best[i] = min(best[i], timers[i]())
        g = [ops / b / 1e9 if b != float("inf") else None for b in best]
        rows.append((name, info, g[0], g[1], g[2]))
        print(f"  done {name}", flush=True)
    for key, g in measure_peaks(threads).items():  # again: keep the best of both
        peaks[key] = max(peaks.get(key, 0.0), g)
    hdr = (f"{'kernel':28s} {'intrin':7s} {'int8 default':>13s} {'int8 tuned':>11s} "
           f"{'fp32 ORT':>9s} {'tuned/fp32':>10s} {'% of int8 peak':>14s}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for name, info, g_def, g_tuned, g_fp in rows:
        var = info.variant
        peak = peaks.get(PEAK_OF.get((info.variant, info.lanes)))
        best = max(g for g in (g_def, g_tuned) if g)
        ratio = f"{best / g_fp:10.2f}" if g_fp else f"{'-':>10s}"
        pct = f"{100 * best / peak:13.0f}%" if peak else f"{'-':>14s}"
        print(f"{name:28s} {var:7s} {g_def:13.1f} "
              f"{(f'{g_tuned:11.1f}' if g_tuned else f'{chr(45):>11s}')} "
              f"{(f'{g_fp:9.1f}' if g_fp else f'{chr(45):>9s}')} {ratio} {pct}")
    if peaks:
        print("\npeaks (GOPS): " + "; ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    print("GOPS = 2 x MACs / time; int8 kernels include bias + requantize to u8; a "
          "(winograd) row counts the direct conv's MACs (16/36 of them are executed), so its "
          "% of peak can pass 100")
    return 0


if __name__ == "__main__":
    sys.exit(main())
