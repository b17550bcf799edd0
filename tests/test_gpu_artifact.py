"""`qcompile build --target intel-gpu`: the OpenCL artifact, its runner, the CLI on it.

fp32 models go through dlight's GPU rules, quantized ones through the int8 templates; both
produce DIR/{model.json, kernels.cl, program.json, weights.npz}, which the pyopencl runner
executes on any OpenCL device (PoCL here) without TVM.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import (assert_opencl_int8_kernels_complete, build_demo_cnn,
                      check_cli_run_and_bench, ort_run,
                      require_opencl)
from qcompile.build import BuildConfig, build
from qcompile.errors import ArtifactError, InputError


@pytest.fixture(scope="module")
def gpu_build(tmp_path_factory):
    return build_demo_cnn(tmp_path_factory, "intel-gpu")


def test_artifact_files_and_format(gpu_build):
    d, res = gpu_build
    out = d / "build"
    for name in ("model.json", "kernels.cl", "program.json", "weights.npz"):
        assert (out / name).is_file(), name
    assert not (out / "model.so").exists()
    meta = json.loads((out / "model.json").read_text())
    assert meta["runtime"] == "opencl"
    assert meta["files"] == {"kernels": "kernels.cl", "program": "program.json",
                             "weights": "weights.npz"}
    assert meta["target"]["name"] == "intel-gpu" and meta["target"]["family"] == "opencl"
    assert '"kind":"opencl"' in meta["target"]["tvm_target"].replace(" ", "")
    assert meta["opencl"]["schedules"] and set(meta["opencl"]["schedules"].values()) == {"dlight"}
    prog = json.loads((out / "program.json").read_text())
    assert prog["format"] == "qcompile-opencl-program" and prog["version"] == 1
    src = (out / "kernels.cl").read_text()
    nbuf = len(prog["storages"])
    weights = np.load(out / "weights.npz")
    for c in prog["constants"]:
        assert weights[c["key"]].nbytes <= prog["storages"][c["storage"]]
    for call in prog["calls"]:
        f = prog["funcs"][call["func"]]
        assert len(f["params"]) == len(call["args"])
        assert all(0 <= s < nbuf for s in call["args"] + call["workspaces"])
        for launch in f["launches"]:
            assert f"__kernel void {launch['kernel']}(" in src
            assert all(g % l == 0 for g, l in zip(launch["global"], launch["local"]))
            assert np.prod(launch["local"]) <= 256   # targets/intel-gpu.toml
    assert [i["name"] for i in prog["inputs"]] == ["input"]


def test_runs_and_matches_onnxruntime(gpu_build):
    require_opencl()
    from qcompile.runtime import load

    d, _ = gpu_build
    m = load(d / "build")
    assert type(m).__name__ == "OpenCLModel"
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = m({"input": x})["prob"]
    want = ort_run(d / "cnn.onnx", {"input": x})[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    t = m.time_runs({"input": x}, 3, 1)
    assert t.shape == (3,) and (t > 0).all()
    prof = m.profile({"input": x}, repeat=2)
    assert len(prof) == len(json.loads((d / "build" / "program.json").read_text())["calls"])
    assert all(sec >= 0 for _, sec in prof)
    info = m.device_info()
    assert info["name"] and info["dot_product_path"] in ("dot()", "char4 fallback")


def test_runner_needs_no_tvm(gpu_build):
    """The artifact runs in a process where `import tvm` fails."""
    require_opencl()
    d, _ = gpu_build
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(d / "x.npy", x)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tvm', 'tvm_ffi'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import numpy as np, qcompile
m = qcompile.load({str(d / 'build')!r})
np.save({str(d / 'y.npy')!r}, m({{'input': np.load({str(d / 'x.npy')!r})}})['prob'])
assert not [k for k in sys.modules if k.split('.')[0] in ('tvm', 'tvm_ffi')]
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = ort_run(d / "cnn.onnx", {"input": x})[0]
    assert np.abs(np.load(d / "y.npy") - want).max() <= 1e-4


def test_input_checks_and_load_errors(gpu_build, tmp_path):
    require_opencl()
    from qcompile.runtime import load

    d, _ = gpu_build
    m = load(d / "build")
    with pytest.raises(InputError, match=r"unknown \['image'\], missing \['input'\]"):
        m({"image": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(InputError, match=r"shape \[1, 3, 32, 32\].*built for \[1, 3, 64, 64\]"):
        m({"input": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(InputError, match="dtype float64"):
        m({"input": np.zeros((1, 3, 64, 64))})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((d / "build" / "model.json").read_text())
    with pytest.raises(ArtifactError, match="lacks kernels.cl, program.json, weights.npz"):
        load(broken)


def test_cli_run_and_bench(gpu_build, tmp_path):
    require_opencl()
    d, _ = gpu_build
    check_cli_run_and_bench(d / "build", tmp_path, niter=3)


def test_int8_model_matches_x86_build(tmp_path):
    """A FakeQuantize CNN through the low-precision passes: the OpenCL artifact's output
    equals the x86 int8 build's bit for bit (the graph is integer up to a final dequantize)."""
    require_opencl()
    import onnx

    from qcompile.demo import make_demo_model
    from qcompile.quantization.api import quantize
    from qcompile.runtime import load

    fp32 = make_demo_model()
    # cut the float softmax: the output is the dequantized Gemm (integer accumulators)
    g = fp32.graph
    soft = [n for n in g.node if n.op_type == "Softmax"][0]
    g.node.remove(soft)
    del g.output[:]
    g.output.extend([onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                                        [1, 10])])
    onnx.save(fp32, tmp_path / "cnn.onnx")
    calib = np.random.default_rng(0).standard_normal((4, 1, 3, 64, 64)).astype(np.float32)
    q = quantize(str(tmp_path / "cnn.onnx"), calib)
    onnx.save(q, tmp_path / "cnn_int8.onnx")
    gpu = build(str(tmp_path / "cnn_int8.onnx"), BuildConfig(target="intel-gpu"),
                tmp_path / "gpu", quiet=True)
    build(str(tmp_path / "cnn_int8.onnx"), BuildConfig(target="host"), tmp_path / "cpu",
          quiet=True)
    # every int8 conv / dense kernel runs its template (none fell back), and the dispatch
    # entries reach model.json `int8_kernels` as on x86
    assert gpu.meta["fallbacks"] == []
    assert len(assert_opencl_int8_kernels_complete(gpu.meta)) == 5   # 4 convs + the Gemm
    assert gpu.meta["int8_kernels"]["by_kernel"] == {"conv2d_int8": 4, "dense_int8": 1}
    assert gpu.meta["opencl"]["int8_dot_product_calls"] > 0
    mg, mc = load(tmp_path / "gpu"), load(tmp_path / "cpu")
    for seed in range(3):
        x = np.random.default_rng(10 + seed).standard_normal((1, 3, 64, 64)).astype(np.float32)
        a, b = mg({"input": x})["logits"], mc({"input": x})["logits"]
        np.testing.assert_array_equal(a, b)
        ref = ort_run(tmp_path / "cnn.onnx", {"input": x})[0]
        assert np.argmax(a) == np.argmax(ref)
