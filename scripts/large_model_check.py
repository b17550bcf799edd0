"""End-to-end check of a model over protobuf's 2 GB limit (weights in ONNX external data).

    python scripts/large_model_check.py OUT_DIR [--hidden 8192 --layers 8] [--keep]

Writes OUT_DIR/model.onnx + model.onnx.data: `--layers` fp32 layers of hidden x hidden
weights (alternately Gemm with transB and bias, and MatMul + Add; Relu between) and a last
MatMul to 1000 outputs, input [1, hidden]; 8 x 8192^2 fp32 + the head = 2.18e9 bytes > 2^31.
The weights are written straight to the data file (this process never holds the model).
Then, each in a child process (wall time, peak RSS of the process and of its own children,
i.e. the linker):
  1. ONNX Runtime on the model (the reference output);
  2. `qcompile build model.onnx -o build --target avx2`, and the build run on the same input:
     max relative error against ONNX Runtime (max |got - want| / max |want|);
  3. `qcompile quantize model.onnx --data calib.npy` (4 random samples, FakeQuantize output:
     written with external data since it keeps the fp32 weights);
  4. `qcompile build` of that quantized model (--no-quantized-build skips it);
  5. shape inference of the loaded model: qcompile's (on a copy without the weights' data)
     vs onnx.shape_inference.infer_shapes_path, both with data propagation.
The big files are deleted at the end unless --keep. Exit status 1 if a step failed.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
t = time.time()
out, what = sys.argv[1], sys.argv[2]
rc, extra = 0, {}
try:
    if what == "cli":
        from qcompile.cli import main
        rc = main(sys.argv[3:])
    else:   # a function of the parent script: name, args
        sys.path.insert(0, sys.argv[3])
        import large_model_check as lmc
        extra = getattr(lmc, what)(*sys.argv[4:]) or {}
except SystemExit as e:
    rc = e.code
ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
json.dump({"rc": rc, "seconds": round(time.time() - t, 1),
           "peak_rss_mib": round(ru_self / 1024), "peak_rss_children_mib": round(ru_kids / 1024),
           **extra}, open(out, "w"))
"""


def make_model(out_dir: Path, hidden: int, layers: int, head: int = 1000, seed: int = 0
               ) -> tuple[Path, int]:
    """Write model.onnx + model.onnx.data tensor by tensor; returns (path, weight bytes)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    data_name = "model.onnx.data"
    inits, nodes = [], []

    with open(out_dir / data_name, "wb") as f:
        def add(name, arr):
            pos = f.tell()
            if pos % 4096:
                f.write(b"\0" * (4096 - pos % 4096))
                pos = f.tell()
            f.write(np.ascontiguousarray(arr, np.float32).tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(pos)),
                         ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)

        x = "x"
        for i in range(layers):
            w = rng.standard_normal((hidden, hidden), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(hidden))
            b = (rng.standard_normal(hidden, dtype=np.float32) * 0.1).astype(np.float32)
            if i % 2 == 0:   # Gemm, weight [out, in]
                add(f"w{i}", w)
                add(f"b{i}", b)
                nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"],
                                              name=f"gemm{i}", transB=1))
                pre = f"g{i}"
            else:
                add(f"w{i}", w)
                add(f"b{i}", b)
                nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"],
                                              name=f"matmul{i}"))
                nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"],
                                              name=f"bias{i}"))
                pre = f"a{i}"
            del w
            nodes.append(helper.make_node("Relu", [pre], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
        wh = rng.standard_normal((hidden, head), dtype=np.float32) * np.float32(
            1.0 / np.sqrt(hidden))
        add("w_head", wh)
        nodes.append(helper.make_node("MatMul", [x, "w_head"], ["y"], name="head"))
        size = f.tell()
    g = helper.make_graph(nodes, "large_mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, head])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = out_dir / "model.onnx"
    onnx.save(m, path)
    return path, size


# ---- steps run in child processes (CHILD calls them by name)

def ort_reference(model: str, x: str, y: str) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    t = time.time()
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load_s = time.time() - t
    np.save(y, s.run(None, {"x": np.load(x)})[0])
    return {"session_seconds": round(load_s, 1)}


def run_build(build_dir: str, x: str, y: str) -> dict:
    import qcompile

    t = time.time()
    m = qcompile.load(build_dir)
    load_s = time.time() - t
    t = time.time()
    out = m({"x": np.load(x)})["y"]
    np.save(y, out)
    return {"load_seconds": round(load_s, 1), "run_seconds": round(time.time() - t, 2)}


def shape_inference(model: str, tmp: str) -> dict:
    import onnx

    from qcompile.frontend import large_model

    t = time.time()
    m = large_model.load(model)
    res = {"load_seconds": round(time.time() - t, 1),
           "estimated_bytes": large_model.estimated_size(m),
           "needs_external": large_model.needs_external(m)}
    t = time.time()
    a = large_model.infer_shapes(m, strict_mode=False, data_prop=True)
    res["qcompile_infer_seconds"] = round(time.time() - t, 2)
    t = time.time()
    onnx.shape_inference.infer_shapes_path(model, tmp, strict_mode=False, data_prop=True)
    res["infer_shapes_path_seconds"] = round(time.time() - t, 2)
    b = onnx.load(tmp, load_external_data=False)
    res["same_value_info"] = list(a.graph.value_info) == list(b.graph.value_info)
    res["value_infos"] = len(a.graph.value_info)
    return res


def child(out_dir: Path, name: str, what: str, *args: str) -> dict:
    res_file = out_dir / f"{name}.json"
    argv = [sys.executable, "-c", CHILD, str(res_file), what]
    if what != "cli":
        argv.append(str(Path(__file__).resolve().parent))
    argv += [str(a) for a in args]
    t = time.time()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t
    res = json.loads(res_file.read_text()) if res_file.is_file() else {"rc": proc.returncode}
    res["wall_seconds"] = round(wall, 1)
    if proc.returncode or res.get("rc"):
        res["output_tail"] = proc.stdout[-3000:]
    else:
        res["output_tail"] = proc.stdout[-600:]
    print(f"== {name}: {json.dumps({k: v for k, v in res.items() if k != 'output_tail'})}",
          flush=True)
    print("   " + res["output_tail"].strip().replace("\n", "\n   "), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--target", default="avx2")
    ap.add_argument("--no-quantized-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the model and build files")
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    t = time.time()
    path, size = make_model(out, a.hidden, a.layers)
    results["model"] = {"weight_bytes": size, "over_2gib": size > 2**31 - 1,
                        "onnx_file_bytes": path.stat().st_size,
                        "seconds": round(time.time() - t, 1)}
    print(f"== model: {json.dumps(results['model'])}", flush=True)
    rng = np.random.default_rng(1)
    np.save(out / "x.npy", rng.standard_normal((1, a.hidden), dtype=np.float32))
    np.save(out / "calib.npy", rng.standard_normal((a.samples, a.hidden), dtype=np.float32))
    ok = True
    try:
        r = results["ort"] = child(out, "ort", "ort_reference", path, out / "x.npy",
                                   out / "y_ort.npy")
        ok &= r.get("rc") == 0
        r = results["build"] = child(out, "build", "cli", "build", path, "-o", out / "build",
                                     "--target", a.target)
        ok &= r.get("rc") == 0
        if r.get("rc") == 0:
            results["build"]["so_bytes"] = (out / "build" / "model.so").stat().st_size
            r = results["run"] = child(out, "run", "run_build", out / "build", out / "x.npy",
                                       out / "y_build.npy")
            ok &= r.get("rc") == 0
            if r.get("rc") == 0 and (out / "y_ort.npy").is_file():
                got, want = np.load(out / "y_build.npy"), np.load(out / "y_ort.npy")
                rel = float(np.abs(got - want).max() / np.abs(want).max())
                results["run"]["max_rel_err_vs_ort"] = rel
                print(f"== fp32 build vs ONNX Runtime: max rel err {rel:.3g}", flush=True)
                ok &= rel < 1e-4
            shutil.rmtree(out / "build", ignore_errors=True)
        r = results["quantize"] = child(out, "quantize", "cli", "quantize", path, "--data",
                                        out / "calib.npy", "-o", out / "q.onnx", "--target",
                                        a.target, "--subset-size", a.samples)
        ok &= r.get("rc") == 0 and "external data" in r.get("output_tail", "")
        if r.get("rc") == 0:
            results["quantize"]["files"] = {p.name: p.stat().st_size
                                            for p in sorted(out.glob("q.onnx*"))}
            if not a.no_quantized_build:
                r = results["build_quantized"] = child(
                    out, "build_quantized", "cli", "build", out / "q.onnx", "-o",
                    out / "build_q", "--target", a.target)
                ok &= r.get("rc") == 0
                if r.get("rc") == 0:
                    results["build_quantized"]["so_bytes"] = \
                        (out / "build_q" / "model.so").stat().st_size
                    r = results["run_quantized"] = child(out, "run_quantized", "run_build",
                                                         out / "build_q", out / "x.npy",
                                                         out / "y_q.npy")
                    if r.get("rc") == 0:
                        got, want = np.load(out / "y_q.npy"), np.load(out / "y_ort.npy")
                        results["run_quantized"]["max_rel_err_vs_fp32_ort"] = float(
                            np.abs(got - want).max() / np.abs(want).max())
                shutil.rmtree(out / "build_q", ignore_errors=True)
        results["shape_inference"] = child(out, "shape_inference", "shape_inference", path,
                                           out / "inferred.onnx")
    finally:
        if not a.keep:
            for p in list(out.glob("*.onnx*")) + [out / "build", out / "build_q"]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
    results["self_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for r in results.values():
        if isinstance(r, dict):
            r.pop("output_tail", None)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'results.json'}; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
