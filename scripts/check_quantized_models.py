#!/usr/bin/env python3
"""Whole-model checks of the low-precision transformation (the issue's "must show" list).

    python scripts/check_quantized_models.py [--models DIR] [--builds DIR]
        [--only resnet50_ort,...] [--inputs 200] [--bert-inputs 20] [--exact-inputs 3]
        [--json OUT.json]

For each quantized model in --models (scripts/make_lpt_models.py writes them):
 1. `qcompile build --target avx2` (runs here) and `--target avx512-vnni --cross`: the
    summary line of each, and whether their per-op tables are identical;
 2. agreement on random inputs (seeded standard normal) of the model cut at its logits (the
    input of the final Softmax; the seeded random-weight models have near-uniform softmax
    outputs, so probabilities compare nothing): qcompile (avx2) against onnxruntime running
    the same QDQ model (CPU EP, its int8 kernels), onnxruntime with graph optimizations off
    (QDQ executed literally in f32: the model's reference semantics), and OpenVINO (CPU
    plugin, int8, reading the same ONNX) — top-1 agreement and max |difference|;
 3. integer exactness: the module after the passes, cut at its last integer tensors, built
    for avx2 and for sse4.2 — as `qcompile build` builds it ("build": the generic path, or
    the kernel dispatch once the build wires it) and through the x86 int8 kernels of
    qcompile.relay_passes.x86_int8_dispatch directly ("x86": AVX2 vpmaddubsw widened to
    s16-safe, SSE4.2) — and compared with qcompile.reference bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

INPUTS = {"resnet50": ("input", (1, 3, 224, 224)), "mobilenetv2": ("input", (1, 3, 224, 224)),
          "bert_block": ("hidden", (1, 128, 768))}


def log(*a):
    print(*a, flush=True)


def cut_before_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model with the input of its final Softmax as the graph output (the Softmax and the
    Q/DQ after it removed). Models that do not end in a Softmax are returned as they are."""
    prod = {o: n for n in model.graph.node for o in n.output}
    node = prod.get(model.graph.output[0].name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear",
                                                  "FakeQuantize", "Identity"):
        node = prod.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return model, model.graph.output[0].name
    logits = node.input[0]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = _upstream(model, logits)
    nodes = [n for n in model.graph.node if any(o in keep for o in n.output)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    del m.graph.output[:]
    m.graph.output.extend([onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT,
                                                              shape)])
    return m, logits


def _upstream(model, tensor):
    prod = {o: n for n in model.graph.node for o in n.output}
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in prod:
            stack.extend(i for i in prod[t].input if i)
    return seen


def _downstream(model, tensor):
    seen, changed = {tensor}, True
    while changed:
        changed = False
        for n in model.graph.node:
            if any(i in seen for i in n.input) and not all(o in seen for o in n.output):
                seen.update(n.output)
                changed = True
    return seen


def ort_session(model: onnx.ModelProto, optimize: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def ov_model(model: onnx.ModelProto):
    try:
        import openvino as ov
    except ImportError:
        return None
    import tempfile

    core = ov.Core()
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(model.SerializeToString())
        path = f.name
    try:
        m = core.read_model(path)
        return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                             "INFERENCE_NUM_THREADS": 2})
    finally:
        os.unlink(path)


def table_key(meta):
    return [(r["node"], r["op"], r["precision"], tuple(r.get("in_dtypes") or ()),
             r.get("out_dtype")) for r in meta["ops"]]


def build(path, out, target, cross=False):
    from qcompile.build import BuildConfig, build as qbuild

    t0 = time.time()
    res = qbuild(path, BuildConfig(target=target, cross=cross), out, quiet=True)
    return res.meta, time.time() - t0


_EXACT_FLOAT = {"relax.quantize", "relax.multiply", "relax.divide", "relax.reshape",
                "relax.permute_dims", "relax.dequantize"}


def last_integer_vars(mod) -> list[str]:
    """Integer tensors read by region-exit dequantizes whose whole computation is integer
    (from the graph input's quantize on): past an f32 op (LayerNorm, Softmax...), TVM's and
    numpy's float results differ in the last bits, so integers downstream need not match."""
    from tvm import relax

    params = set(mod["main"].params)
    exact: set = set()
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            if not isinstance(v, relax.Call):
                if isinstance(v, (relax.Tuple, relax.TupleGetItem, relax.Var)):
                    fv = relax.analysis.free_vars(v)
                    if all(f in exact for f in fv):
                        exact.add(b.var)
                continue
            name = getattr(v.op, "name", "")
            args = [a for a in v.args if isinstance(a, relax.Var)]
            if isinstance(v.args[0], relax.Tuple):
                args += [f for f in v.args[0].fields if isinstance(f, relax.Var)]
            dt = str(b.var.ty.dtype) if isinstance(b.var.ty, relax.TensorType) else ""
            if name == "relax.dequantize" and args and args[0] in exact and \
                    "int" in str(args[0].ty.dtype):
                out.append(args[0].name)
            if name in _EXACT_FLOAT and all(a in exact or a in params for a in args):
                exact.add(b.var)        # one correctly rounded f32 operation per element
            elif "int" in dt and all(a in exact for a in args):
                exact.add(b.var)
    return list(dict.fromkeys(out))[-2:]


def exactness(path, n_inputs, shape, rng, targets=("avx2", "sse4.2")):
    import tvm
    from tvm import relax

    from qcompile import codegen, reference
    from qcompile.frontend import import_onnx
    from qcompile.relay_passes import pipeline as lp
    from qcompile.targets import all_targets

    im = import_onnx(path)
    spec = all_targets()["avx2"]
    ctx = lp.LowPrecisionContext(spec=spec, node_names=im.node_names)
    mod = lp.run(im.mod, ctx)
    names = last_integer_vars(mod)
    cut = reference.cut_at(mod, names)
    xs = [rng.standard_normal(shape).astype(np.float32) * s for s in (1.0, 3.0, 0.3)][:n_inputs]
    refs = []
    for x in xs:
        r = reference.run(cut, [x])
        refs.append(list(r) if isinstance(r, tuple) else [r])
    result = {"tensors": names}
    try:
        from qcompile.relay_passes import x86_int8_dispatch as x86
    except ImportError:
        x86 = None
    variants = [(t, "build") for t in targets] + ([(t, "x86") for t in targets] if x86 else [])
    for t, how in variants:
        spec_t = all_targets()[t]
        tgt = spec_t.tvm_target(2)
        if how == "build":     # what `qcompile build` does (its kernel dispatch when wired)
            from qcompile import build as qb

            m2, default_schedule = qb._dispatch_kernels(cut, spec_t)
            ex = codegen.compile_fused(codegen.fuse(m2, tgt), tgt,
                                       default_schedule=default_schedule)
        else:                  # the x86 int8 kernels (vpmaddubsw widened / sse4.2) directly
            ex = tvm.compile(x86.lower(x86.dispatch(cut, spec_t), spec_t), target=tgt)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        worst = 0
        for x, ref in zip(xs, refs):
            out = vm["main"](tvm.runtime.tensor(x))
            got = [o.numpy() for o in out] if not isinstance(out, tvm.runtime.Tensor) else \
                [out.numpy()]
            for g, r in zip(got, ref):
                worst = max(worst, int(np.abs(g.astype(np.int64) - r.astype(np.int64)).max()))
        result[f"{t}/{how}"] = {"max_int_diff": worst, "inputs": len(xs)}
    return result


def agreement(build_dir, cut_model, logits, inp, shape, n, rng, n_ref=20):
    """qcompile against the references: onnxruntime (int8 kernels), onnxruntime without graph
    optimizations (QDQ executed literally in f32), OpenVINO's CPU plugin; for FakeQuantize
    models (which onnxruntime cannot load) the FakeQuantize graph executed in f32 by
    qcompile.reference (the numerics contract of docs/architecture.md) on the first `n_ref` inputs."""
    import qcompile
    from qcompile import reference
    from qcompile.frontend import import_onnx

    m = qcompile.load(build_dir)
    has_fq = any(nd.op_type == "FakeQuantize" for nd in cut_model.graph.node)
    sess = sess_ref = fq_mod = None
    if has_fq:
        fq_mod = import_onnx(cut_model).mod
    else:
        sess, sess_ref = ort_session(cut_model, True), ort_session(cut_model, False)
    ovm = ov_model(cut_model)
    keys = (["fq_f32"] if has_fq else ["ort", "ort_noopt"]) + (["openvino"] if ovm else [])
    stats = {k: {"top1": 0.0, "maxabs": 0.0, "n": 0} for k in keys}
    # how far the references are from each other (the scale of "agreement" here)
    spread = {}
    t_q = 0.0
    y = None
    for i in range(n):
        x = rng.standard_normal(shape).astype(np.float32)
        t = time.time()
        y = list(m({inp: x}).values())[0]
        t_q += time.time() - t
        others = {}
        if sess is not None:
            others["ort"] = sess.run(None, {inp: x})[0]
            others["ort_noopt"] = sess_ref.run(None, {inp: x})[0]
        if fq_mod is not None and i < n_ref:
            others["fq_f32"] = reference.run(fq_mod, [x])
        if ovm is not None:
            others["openvino"] = np.asarray(ovm({inp: x})[0])
        base = others.get("ort_noopt", others.get("fq_f32"))
        for k, o in others.items():
            o = o.reshape(y.shape)
            if base is not None and k not in ("ort_noopt", "fq_f32"):
                key = f"{k}_vs_f32_semantics"
                spread[key] = max(spread.get(key, 0.0),
                                  float(np.abs(o - base.reshape(y.shape)).max()))
            stats[k]["maxabs"] = max(stats[k]["maxabs"], float(np.abs(y - o).max()))
            stats[k]["n"] += 1
            if y.ndim == 2:
                stats[k]["top1"] += int(np.argmax(y) == np.argmax(o))
            else:   # BERT: the fraction of tokens whose argmax over the hidden dim agrees
                stats[k]["top1"] += float(np.mean(np.argmax(y, -1) == np.argmax(o, -1)))
    for k in keys:
        stats[k]["top1"] = stats[k]["top1"] / max(stats[k]["n"], 1)
    stats["inputs"] = n
    stats["reference_spread"] = spread
    stats["qcompile_seconds_per_inference"] = t_q / max(n, 1)
    stats["output_absmax"] = float(np.abs(y).max())
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="/work/lpt_models")
    ap.add_argument("--builds", default="/work/lpt_builds")
    ap.add_argument("--only", default="resnet50_ort,resnet50_nncf,mobilenetv2_ort,"
                                      "mobilenetv2_nncf,bert_block_ort,bert_block_nncf")
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--bert-inputs", type=int, default=20)
    ap.add_argument("--exact-inputs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of steps to skip: "
                                                "cross,agreement,exact")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.builds, exist_ok=True)
    results = {}
    for name in args.only.split(","):
        base = name.rsplit("_", 1)[0]
        inp, shape = INPUTS[base]
        path = os.path.join(args.models, name + ".onnx")
        r = results[name] = {}
        log(f"== {name}")
        meta, secs = build(path, os.path.join(args.builds, name + "_avx2"), "avx2")
        r["avx2"] = {"summary": meta["precision_summary"], "build_seconds": round(secs, 1),
                     "f32_ops": [(o["op"], o["node"], o.get("reason")) for o in meta["ops"]
                                 if o["precision"] == "f32"]}
        log(f"  avx2: {meta['precision_summary']}  ({secs:.0f}s)")
        if "cross" not in skip:
            meta_v, secs = build(path, os.path.join(args.builds, name + "_vnni"), "avx512-vnni",
                                 cross=True)
            same = table_key(meta_v) == table_key(meta)
            r["avx512-vnni"] = {"summary": meta_v["precision_summary"],
                                "build_seconds": round(secs, 1), "table_identical": same}
            log(f"  avx512-vnni (--cross): {meta_v['precision_summary']}  table identical to "
                f"avx2: {same}")
        if "agreement" not in skip:
            cut, logits = cut_before_softmax(onnx.load(path))
            cut_path = os.path.join(args.builds, name + "_logits.onnx")
            onnx.save(cut, cut_path)
            bdir = os.path.join(args.builds, name + "_logits_avx2")
            build(cut_path, bdir, "avx2")
            n = args.bert_inputs if base.startswith("bert") else args.inputs
            st = agreement(bdir, cut, logits, inp, shape, n, np.random.default_rng(2024))
            r["agreement"] = {"output": logits, **st}
            log(f"  agreement on {n} inputs at {logits!r}: " + ", ".join(
                f"{k}: top-1 {v['top1']:.3f} max|diff| {v['maxabs']:.4g} ({v['n']} inputs)"
                for k, v in st.items() if isinstance(v, dict) and "top1" in v)
                + f" (references among themselves: {st['reference_spread']}; |out| up to "
                  f"{st['output_absmax']:.3g}; qcompile "
                  f"{st['qcompile_seconds_per_inference']:.2f}s/inference)")
        if "exact" not in skip:
            ex = exactness(path, args.exact_inputs, shape, np.random.default_rng(7))
            r["exact"] = ex
            log(f"  integers vs qcompile.reference at {ex['tensors']}: " + ", ".join(
                f"{t}: max diff {v['max_int_diff']} on {v['inputs']} inputs"
                for t, v in ex.items() if isinstance(v, dict)))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
