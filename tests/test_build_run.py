"""Build -> export -> reload in a fresh process -> run -> bench, and the run-time error paths."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import build_demo_cnn, check_cli_run_and_bench, ort_run
from qcompile.build import BuildConfig, build
from qcompile.errors import ArtifactError, InputError, QCompileError
from qcompile.runtime import load


@pytest.fixture(scope="module")
def cnn_build(tmp_path_factory):
    return build_demo_cnn(tmp_path_factory, "host")


def test_artifact_files_and_metadata(cnn_build):
    d, res = cnn_build
    assert (d / "build" / "model.so").is_file()
    meta = json.loads((d / "build" / "model.json").read_text())
    assert meta["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert meta["outputs"][0]["name"] == "prob"
    assert meta["target"]["name"] in ("avx2", "avx512-vnni", "avx512", "avx2-vnni", "sse4.2")
    assert meta["versions"]["apache-tvm"] == "0.27.0.post1"
    assert meta["config"]["target"] == "host"
    ops = {r["node"]: r for r in meta["ops"]}
    assert ops["conv1"]["op"] == "Conv" and ops["prob"]["precision"] == "f32"


def test_reload_in_fresh_process_matches_onnxruntime(cnn_build):
    d, _ = cnn_build
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(d / "x.npy", x)
    code = (f"import numpy as np, qcompile; m = qcompile.load({str(d / 'build')!r}); "
            f"np.save({str(d / 'y.npy')!r}, m({{'input': np.load({str(d / 'x.npy')!r})}})['prob'])")
    subprocess.run([sys.executable, "-c", code], check=True)
    got = np.load(d / "y.npy")
    want = ort_run(d / "cnn.onnx", {"input": x})[0]
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


def test_input_checks(cnn_build):
    d, _ = cnn_build
    m = load(d / "build")
    good = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(InputError, match=r"unknown \['image'\], missing \['input'\]"):
        m({"image": good})
    with pytest.raises(InputError, match=r"shape \[1, 3, 32, 32\].*built for \[1, 3, 64, 64\]"):
        m({"input": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(InputError, match="dtype float64.*astype\\('float32'\\)"):
        m({"input": good.astype(np.float64)})


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no model.json"):
        load(tmp_path)


def _copy_build(cnn_build, tmp_path):
    import shutil

    d, _ = cnn_build
    out = tmp_path / "copy"
    shutil.copytree(d / "build", out)
    return out, json.loads((out / "model.json").read_text())


def _reseal(out, meta):
    """Write model.json with a valid own checksum (an edit made by a tool, not by hand)."""
    from qcompile import artifact

    meta["meta_sha256"] = artifact._meta_sha256(meta)
    (out / "model.json").write_text(json.dumps(meta))


def test_edited_or_truncated_model_json_is_refused(cnn_build, tmp_path):
    out, meta = _copy_build(cnn_build, tmp_path)
    text = (out / "model.json").read_text()
    (out / "model.json").write_text(text.replace('"prob"', '"probs"', 1))
    with pytest.raises(ArtifactError, match="does not match its checksum.*edited"):
        load(out)
    (out / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON.*truncated"):
        load(out)
    del meta["inputs"]
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks the key.*inputs"):
        load(out)


def test_truncated_or_corrupt_library_is_refused(cnn_build, tmp_path):
    out, meta = _copy_build(cnn_build, tmp_path)
    lib = (out / "model.so").read_bytes()
    (out / "model.so").write_bytes(lib[: len(lib) // 2])
    with pytest.raises(ArtifactError, match="model.so does not match the checksum"):
        load(out)
    # garbage whose checksum was recorded: the loader's own error, as an ArtifactError
    (out / "model.so").write_bytes(b"\x7fELF" + b"\0" * 64)
    from qcompile import artifact

    meta["checksums"]["model.so"] = artifact._file_sha256(out / "model.so")
    _reseal(out, meta)
    with pytest.raises(ArtifactError, match="cannot load .*model.so"):
        load(out)


def test_artifact_for_missing_cpu_flags_is_refused(cnn_build, tmp_path):
    out, meta = _copy_build(cnn_build, tmp_path)
    meta["target"]["required_flags"] = meta["target"]["required_flags"] + ["qc_no_such_flag"]
    _reseal(out, meta)
    with pytest.raises(ArtifactError, match="needs CPU flag\\(s\\) qc_no_such_flag.*illegal"):
        load(out)
    # inspect still describes it (it runs nothing)
    res = subprocess.run([sys.executable, "-m", "qcompile", "inspect", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_cli_run_and_bench(cnn_build, tmp_path):
    d, _ = cnn_build
    bench = check_cli_run_and_bench(d / "build", tmp_path, niter=5)
    for word in ("P90:", "Min:", "Max:"):
        assert word in bench
    bad = subprocess.run([sys.executable, "-m", "qcompile", "run", str(d / "build"), "--input",
                          f"input={tmp_path / 'missing.npy'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.npy" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_errors_are_one_clear_line(tmp_path, mlp_path):
    r = subprocess.run([sys.executable, "-m", "qcompile", "build", str(mlp_path), "-o",
                        str(tmp_path / "b"), "--target", "avx512vnni"], capture_output=True, text=True)
    assert r.returncode == 2 and "Did you mean avx512-vnni" in r.stderr and "Traceback" not in r.stderr


def test_cross_build_for_avx512_vnni(mlp_path, tmp_path):
    res = build(str(mlp_path), BuildConfig(target="avx512-vnni", cross=True), tmp_path / "b",
                quiet=True)
    assert res.meta["target"]["name"] == "avx512-vnni"
    assert "cascadelake" in res.meta["target"]["tvm_target"]


def test_trials_need_a_database(mlp_path, tmp_path):
    with pytest.raises(QCompileError, match="--trials needs --tuning-db"):
        build(str(mlp_path), BuildConfig(trials=4), tmp_path / "b", quiet=True)


def test_demo_runs_fp32_and_int8(tmp_path, capsys):
    """`qcompile demo`: fp32 build checked vs the ONNX reference, then PTQ + int8 build."""
    from qcompile.demo import run_demo

    assert run_demo(str(tmp_path), niter=5) == 0
    out = capsys.readouterr().out
    assert "fp32 output check vs ONNX reference" in out and "(OK)" in out
    assert "7 of 8 compute ops in INT8; f32: [Softmax 'prob']" in out
    assert (tmp_path / "int8" / "model.so").exists() and (tmp_path / "demo_int8.onnx").exists()


def test_runtime_uses_every_physical_core():
    """TVM alone would use hardware_concurrency/2 threads on x86 (one on a 2-core VM without
    SMT); importing qcompile sets the pool to the physical core count unless the user chose."""
    import os
    import subprocess
    import sys

    import psutil

    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = "import qcompile, tvm; print(tvm.get_global_func('runtime.NumThreads')())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert int(out.strip().splitlines()[-1]) == (psutil.cpu_count(logical=False) or os.cpu_count())
    env["TVM_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "1"


def test_python_api_build_stays_a_function(mlp_path, tmp_path):
    """`qcompile.build` is the function, on every call: the submodule of the same name once
    replaced it after the first import (TypeError: 'module' object is not callable)."""
    import qcompile

    for i in range(2):
        res = qcompile.build(mlp_path, tmp_path / f"b{i}", quiet=True, target="host")
        assert (res.out_dir / "model.so").is_file()
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(qcompile.load(tmp_path / "b0")({"x": x})["y"],
                                  qcompile.load(tmp_path / "b1")({"x": x})["y"])
