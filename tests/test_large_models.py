"""Models whose weights live in ONNX external data, and the paths taken above protobuf's
2 GB limit (qcompile/frontend/large_model.py). `PROTOBUF_LIMIT` is monkeypatched to 256 KB,
so a 2 MB model takes the same code paths as a 2.2 GB one (scripts/large_model_check.py runs
the real thing)."""
import argparse
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.build import BuildConfig, build
from qcompile.errors import ModelError
from qcompile.frontend import large_model
from qcompile.runtime import load

SMALL_LIMIT = 256 << 10


def make_model() -> onnx.ModelProto:
    """x[1,4,16,16] -> conv1 -> relu -> conv2 -> relu -> Reshape to [1,4096] (its shape
    computed: Shape -> Gather -> Concat, which needs data propagation) -> fc1 (MatMul, 2 MB
    of weights) + b -> relu -> fc2 -> y[1,10]."""
    rng = np.random.default_rng(0)

    def t(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [numpy_helper.from_array(t((16, 4, 3, 3), 0.3), "w1"),
             numpy_helper.from_array(t((16,), 0.1), "b1"),
             numpy_helper.from_array(t((16, 16, 3, 3), 0.15), "w2"),
             numpy_helper.from_array(np.array([0], np.int64), "idx0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(t((4096, 128), 0.03), "w3"),
             numpy_helper.from_array(t((128,), 0.1), "b3"),
             numpy_helper.from_array(t((128, 10), 0.2), "w4")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Shape", ["r2"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "idx0"], ["n"], name="batch", axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], name="cat", axis=0),
             helper.make_node("Reshape", ["r2", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w3"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b3"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["hr"], name="relu3"),
             helper.make_node("MatMul", ["hr", "w4"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "large_test",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def x_input(seed=5):
    return np.random.default_rng(seed).standard_normal((1, 4, 16, 16)).astype(np.float32)


def calib(n=6):
    return np.random.default_rng(1).standard_normal((n, 4, 16, 16)).astype(np.float32)


def spy(monkeypatch, name):
    calls = []
    real = getattr(large_model, name)

    def wrapper(*a, **k):
        out = real(*a, **k)
        calls.append((a, k, out))
        return out

    monkeypatch.setattr(large_model, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("large")
    m = make_model()
    onnx.save(m, d / "inline.onnx")
    (d / "ext").mkdir()
    onnx.save(make_model(), d / "ext" / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    np.save(d / "calib.npy", calib())
    return d


@pytest.fixture(scope="module")
def reference(files):
    """The inline model built the ordinary way, and its output."""
    build(str(files / "inline.onnx"), BuildConfig(target="avx2"), files / "b_ref", quiet=True)
    return load(files / "b_ref")({"x": x_input()})["y"]


def test_external_data_builds_bit_identical(files, reference):
    ext = onnx.load(files / "ext" / "model.onnx", load_external_data=False)
    assert large_model.has_external_data(ext)        # the fixture really uses external data
    build(str(files / "ext" / "model.onnx"), BuildConfig(target="avx2"), files / "b_ext",
          quiet=True)
    got = load(files / "b_ext")({"x": x_input()})["y"]
    assert np.array_equal(got, reference)
    import onnxruntime as ort
    want = ort.InferenceSession(str(files / "ext" / "model.onnx"),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x_input()})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_strip_infer_save_helpers(tmp_path, monkeypatch):
    m = make_model()
    assert not large_model.needs_external(m)
    est = large_model.estimated_size(m)
    assert abs(est - m.ByteSize()) < (2 << 20)      # tensor bytes + a fixed overhead
    monkeypatch.setattr(large_model, "PROTOBUF_LIMIT", SMALL_LIMIT)
    assert large_model.needs_external(m)
    s = large_model.strip(m)
    assert s.ByteSize() < 4096 and [t.name for t in s.graph.initializer] == \
        [t.name for t in m.graph.initializer]
    w3 = next(t for t in s.graph.initializer if t.name == "w3")
    assert list(w3.dims) == [4096, 128] and w3.data_location == TensorProto.EXTERNAL
    # data propagation works on the stripped copy: the Reshape's output shape is known
    big = large_model.infer_shapes(m, strict_mode=False, data_prop=True)
    small = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    assert big.graph.value_info == small.graph.value_info
    assert any(v.name == "flat" and [d.dim_value for d in v.type.tensor_type.shape.dim]
               == [1, 4096] for v in big.graph.value_info)
    assert big.graph.initializer == m.graph.initializer
    mine = large_model.copy(m)
    assert large_model.infer_shapes(mine, inplace=True, data_prop=True) is mine
    assert mine.graph.value_info == small.graph.value_info
    # saving: weights to <name>.data, the model unchanged, loadable by onnx and ORT
    before = m.SerializeToString()
    data = large_model.save(m, tmp_path / "s.onnx")
    assert data == tmp_path / "s.onnx.data" and data.stat().st_size > 2 << 20
    assert m.SerializeToString() == before
    back = onnx.load(tmp_path / "s.onnx")
    for a, b in zip(back.graph.initializer, m.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert large_model.restore(large_model.strip(m), m).graph.initializer == m.graph.initializer


def test_large_paths_build_and_quantize(files, reference, monkeypatch, capsys):
    """With the limit at 256 KB the 2 MB model goes through the large-model paths: checked
    from its path, shapes inferred on a stripped copy, ORT sessions opened from temporary
    files, the quantized model written with external data and built again. Results equal
    the ordinary path's."""
    from qcompile.quantization import cli_quantize, quantize_detailed

    # the ordinary path first (the limit as shipped)
    q_ref = quantize_detailed(str(files / "inline.onnx"), calib(), target="avx2",
                              subset_size=6).model()
    onnx.save(q_ref, files / "q_ref.onnx")

    monkeypatch.setattr(large_model, "PROTOBUF_LIMIT", SMALL_LIMIT)
    strips, saves, sessions = (spy(monkeypatch, n) for n in ("strip", "save", "ort_session"))
    checked = []
    real_check = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: (checked.append(m), real_check(m, *a, **k))[1])

    build(str(files / "inline.onnx"), BuildConfig(target="avx2"), files / "b_large",
          quiet=True)
    assert strips and any(isinstance(m, str) and m.endswith("inline.onnx") for m in checked)
    assert np.array_equal(load(files / "b_large")({"x": x_input()})["y"], reference)

    p = argparse.ArgumentParser()
    cli_quantize.add_arguments(p)
    args = p.parse_args([str(files / "inline.onnx"), "--data", str(files / "calib.npy"),
                         "-o", str(files / "q_large.onnx"), "--target", "avx2",
                         "--subset-size", "6"])
    assert cli_quantize.run(args) == 0
    assert "external data" in capsys.readouterr().out
    assert sessions and all(tmp is not None for _, _, (_, tmp) in sessions)   # ORT from files
    assert (files / "q_large.onnx.data").is_file() and any(out for *_, out in saves)
    q = onnx.load(files / "q_large.onnx")
    assert [(n.op_type, list(n.input)) for n in q.graph.node] == \
        [(n.op_type, list(n.input)) for n in q_ref.graph.node]
    ref_inits = {t.name: numpy_helper.to_array(t) for t in q_ref.graph.initializer}
    assert {t.name for t in q.graph.initializer} == set(ref_inits)
    for t in q.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), ref_inits[t.name]), t.name

    # the quantized model written with external data builds (large path) like the ordinary
    build(str(files / "q_large.onnx"), BuildConfig(target="avx2"), files / "bq_large",
          quiet=True)
    monkeypatch.undo()
    build(str(files / "q_ref.onnx"), BuildConfig(target="avx2"), files / "bq_ref", quiet=True)
    assert np.array_equal(load(files / "bq_large")({"x": x_input()})["y"],
                          load(files / "bq_ref")({"x": x_input()})["y"])


def test_missing_or_short_external_data_is_a_clear_error(files, tmp_path):
    from qcompile.quantization.graph import load_model as quant_load

    d = tmp_path / "broken"
    d.mkdir()
    shutil.copy(files / "ext" / "model.onnx", d / "model.onnx")
    with pytest.raises(ModelError, match=r"model\.onnx.*'model\.onnx\.data', which does not "
                                         r"exist.*Copy that file next to 'model\.onnx'"):
        build(str(d / "model.onnx"), BuildConfig(target="avx2"), d / "b", quiet=True)
    with pytest.raises(ModelError, match=r"model\.onnx\.data', which does not exist"):
        quant_load(d / "model.onnx")
    data = (files / "ext" / "model.onnx.data").read_bytes()
    (d / "model.onnx.data").write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelError, match=r"model\.onnx\.data.*truncated"):
        build(str(d / "model.onnx"), BuildConfig(target="avx2"), d / "b", quiet=True)


def test_runner_edit_hook_large_and_small(monkeypatch):
    """Runner(edit=...) extends the model it runs; over the limit it gets the stripped copy
    (no weights copied) and the session the same results."""
    from qcompile.quantization.runner import Runner

    def edit(m):
        out = onnx.ModelProto()
        out.CopyFrom(m)
        out.graph.node.append(helper.make_node("Neg", ["hr"], ["neg"], name="neg"))
        out.graph.output.append(helper.make_tensor_value_info("neg", TensorProto.FLOAT, None))
        return out

    m = make_model()
    feed = {"x": x_input()}
    small = Runner(m, ["r2"], edit=edit, optimize=False).run(feed)
    monkeypatch.setattr(large_model, "PROTOBUF_LIMIT", SMALL_LIMIT)
    seen = []
    r = Runner(m, ["r2"], edit=lambda s: (seen.append(s.ByteSize()), edit(s))[1],
               optimize=False)
    assert r._tmpdir is not None and seen and seen[0] < 8192     # the stripped copy
    big = r.run(feed)
    assert set(big) == set(small) == {"y", "neg", "r2"}
    for k in small:
        assert np.array_equal(big[k], small[k]), k


def test_upgrade_opset_large(monkeypatch):
    """--format qdq converts an opset < 13 model; over the limit the version converter runs
    on the stripped copy and the weights are put back."""
    from qcompile.quantization.export import upgrade_opset

    m = make_model()
    m.opset_import[0].version = 11
    want = upgrade_opset(m, 13)
    monkeypatch.setattr(large_model, "PROTOBUF_LIMIT", SMALL_LIMIT)
    strips = spy(monkeypatch, "strip")
    got = upgrade_opset(m, 13)
    assert strips and got.opset_import[0].version == 13
    assert got.graph == want.graph
