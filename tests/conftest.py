"""Shared fixtures: small models built with onnx.helper (tests never read ../shared)."""
from __future__ import annotations

import functools
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

os.environ.setdefault("TVM_NUM_THREADS", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))


def make_mlp(seed=0, batch="fixed", in_dim=16, hidden=32, out_dim=8):
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((in_dim, hidden)) * 0.3).astype(np.float32), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, out_dim)) * 0.3).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    dim0 = 2 if batch == "fixed" else "batch"
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim0, in_dim])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim0, out_dim])],
                          initializer=[w1, b1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def mlp_path(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), p)
    return p


@pytest.fixture
def other_x86_target():
    """An x86 target that is *not* the one `--target host` resolves to on this CPU (tests
    that need "a database / record of another target" must not hard-code one: on a VNNI host
    `avx512-vnni` is the host)."""
    from qcompile import targets

    host = targets.detect_host().name
    others = [t for t in targets.all_targets().values() if t.family == "x86" and t.name != host]
    return max(others, key=lambda t: t.host_priority)


@pytest.fixture
def cnn_model():
    from qcompile.demo import make_demo_model

    return make_demo_model()


@pytest.fixture
def cnn_path(tmp_path, cnn_model):
    p = tmp_path / "cnn.onnx"
    onnx.save(cnn_model, p)
    return p


def build_demo_cnn(tmp_path_factory, target: str):
    """The fp32 demo CNN saved as DIR/cnn.onnx and built for `target` into DIR/build, in a
    fresh temporary DIR: (DIR, BuildResult). The module-scoped build fixtures of
    test_build_run.py (host) and test_gpu_artifact.py (intel-gpu) share it."""
    from qcompile.build import BuildConfig, build
    from qcompile.demo import make_demo_model

    d = tmp_path_factory.mktemp(f"cnn-{target}")
    onnx.save(make_demo_model(), d / "cnn.onnx")
    res = build(str(d / "cnn.onnx"), BuildConfig(target=target), d / "build", quiet=True)
    return d, res


# ONNX ops an int8 kernel template computes (conv2d / dense / batch-matmul)
TEMPLATE_OPS = ("Conv", "MatMul", "Gemm", "QLinearConv", "QLinearMatMul", "ConvInteger",
                "MatMulInteger")


def check_cli_run_and_bench(build_dir, tmp_path, niter: int = 5) -> str:
    """`qcompile run` of the demo CNN's build (softmax output sums to 1) and `qcompile bench`
    with per-kernel counters; returns bench's stdout."""
    import subprocess

    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-m", "qcompile", "run", str(build_dir), "--input",
                          f"input={tmp_path / 'x.npy'}", "--output", str(tmp_path / "o.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = np.load(tmp_path / "o.npz")["prob"]
    assert got.shape == (1, 10) and abs(got.sum() - 1) < 1e-4
    bench = subprocess.run([sys.executable, "-m", "qcompile", "bench", str(build_dir),
                            "-niter", str(niter), "-report_type", "average_counters"],
                           capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    for word in ("Median:", "Throughput:", "fused_conv2d"):
        assert word in bench.stdout
    return bench.stdout


def assert_opencl_int8_kernels_complete(meta: dict) -> set[str]:
    """Every kernel computing an int8 Conv / MatMul / Gemm of an OpenCL build's model.json
    runs its int8 template, or is listed in `fallbacks` with its reason -- not a count: the
    set of such kernels must equal templated | fallen back, and no kernel may be both.
    Returns the templated kernels."""
    int8_nodes = {r["node"] for r in meta["ops"]
                  if r["op"] in TEMPLATE_OPS and r["precision"] == "int8"}
    int8_kernels = {k["function"] for k in meta["kernels"] if int8_nodes & set(k["nodes"])}
    templated = {k for k, v in meta["opencl"]["schedules"].items() if v == "int8 template"}
    fell_back = {f["kernel"] for f in meta["fallbacks"] if f["stage"].startswith("opencl int8")}
    assert int8_nodes and int8_kernels, meta["kernels"]
    assert all(f["reason"] for f in meta["fallbacks"]), meta["fallbacks"]
    assert not templated & fell_back, (templated, meta["fallbacks"])
    assert int8_kernels == templated | fell_back, (int8_kernels, meta["opencl"]["schedules"],
                                                   meta["fallbacks"])
    return templated


def ort_run(model_or_path, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


# ------------------------------------------------------------------ OpenCL device (GPU tests)
@functools.lru_cache(maxsize=None)
def _opencl_device():
    from qcompile.gpu import opencl

    try:
        return opencl.pick_device(), None
    except opencl.OpenCLUnavailable as err:
        return None, str(err)


def require_opencl():
    """The OpenCL device the GPU tests run on. Without one the test is skipped -- except
    under CI=true, where it fails: `.ci/run` installs PoCL and pyopencl, so a missing device
    there means the GPU path broke, not that the machine lacks one."""
    dev, why = _opencl_device()
    if dev is None:
        msg = f"no OpenCL device ({why}); install pocl-opencl-icd and pyopencl"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg} -- under CI=true a missing OpenCL device is a failure "
                        "(.ci/run installs PoCL)")
        pytest.skip(msg)
    return dev


@pytest.fixture
def opencl_device():
    return require_opencl()


# ------------------------------------------------------------------ integer references
def conv_ref(x, w, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), pad_value=0,
             groups=1):
    """The int32 accumulator of an int8 conv (`qcompile.reference.conv2d`, exact), padded
    with `pad_value` (the input's zero point): the kernel tests' reference."""
    from qcompile import reference

    return reference.conv2d(x, w, strides, padding, dilation, groups, out_dtype=np.int32,
                            pad_value=pad_value)
