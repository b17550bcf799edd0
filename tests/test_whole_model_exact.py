"""A whole int8 model on every x86 target file: the kernels it runs, and bit-exact results.

The model is `lpt_helpers.fp32_cnn` without its Softmax (the output is the dequantized u8
logits): a strided 3x3 conv, a max-pool, a 3x3 stride-1 conv with 8x8 outputs (16 2x2 tiles,
`winograd.MIN_TILES`), a 1x1 conv with a residual add, a global average pool and a MatMul,
quantized to QDQ by onnxruntime (`lpt_helpers.ort_quantize`) with 8-bit weights (|q| <= 127)
and again with those weights halved to 7 bits (|q| <= 64, what `qcompile quantize
--overflow-fix all` gives): on `vpmaddubsw` targets the dispatch picks different kernels for
the two (the exact widened ones / the saturating `fast` pair).

For every x86 target in targets/ it is built as `qcompile build --target T --no-pretuned`
builds it (no tuning; `--cross` where this CPU cannot run T), and model.json must show
(`int8_kernels`, `fallbacks`, the per-op table):
* every conv and the dense on a qcompile int8 kernel whose dot-product intrinsic is of the
  target's `[int8] dot_product` kind (schedules/x86/intrinsics.py `DOT_KINDS`), with the
  variant that kind and the weights call for: `vnni` on VNNI targets; `fast` for 7-bit and
  `widen`/`widen16` for 8-bit weights on `vpmaddubsw` targets; the 3x3 stride-1 conv as exact
  Winograd (its s16 GEMM: `widen16`) exactly on targets whose `[int8] winograd` is set;
* nothing left alone, no fallback, every compute op in int8.
On every target this CPU runs, the artifact's output then equals `qcompile.reference` run on
the same low-precision IR bit for bit (it is a dequantize of the u8 logits: equal floats are
equal integers). The numerics of a target this CPU cannot run are skipped, naming the CPU
flags it lacks; its dispatch was checked on the cross-built artifact first.
"""
from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lpt_helpers import fp32_cnn, ort_quantize
from qcompile import reference
from qcompile.build import BuildConfig, build
from qcompile.frontend import import_onnx
from qcompile.relay_passes import pipeline as lp
from qcompile.runtime import load
from qcompile.schedules.x86 import intrinsics
from qcompile.targets import all_targets

X86 = sorted(t.name for t in all_targets().values() if t.family == "x86")
WINOGRAD = "conv2d_winograd_nchwc"


def _logits_model():
    """fp32_cnn with its final Softmax removed: the MatMul's output is the model's."""
    m = fp32_cnn()
    last = m.graph.node[-1]
    assert last.op_type == "Softmax", last
    m.graph.node.remove(last)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(last.input[0], TensorProto.FLOAT,
                                                        [1, 10]))
    return m


def _halve_weights(q: onnx.ModelProto) -> onnx.ModelProto:
    """The int8 conv / MatMul weights of a QDQ model halved (round half to even): 7-bit
    weights on the 8-bit grid, whose vpmaddubsw pair sums cannot saturate."""
    dequantized = {n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    halved = 0
    for t in q.graph.initializer:
        if t.name in dequantized and t.data_type == TensorProto.INT8 and len(t.dims) >= 2:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.round(w / 2).astype(np.int8), t.name))
            halved += 1
    assert halved == 4, halved      # three convs and the MatMul
    return q


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for bits in (8, 7):
        q = ort_quantize(_logits_model(), fmt="qdq")
        if bits == 7:
            q = _halve_weights(q)
        out[bits] = d / f"cnn_w{bits}.onnx"
        onnx.save(q, out[bits])
    return out


def _expected_variants(spec, bits: int, kernel: str) -> set[str]:
    if kernel == WINOGRAD:
        return {"widen16"}                      # the Winograd GEMM multiplies s16 x s16
    if intrinsics.DOT_KINDS[spec.int8.dot_product].one_step:
        return {"vnni"}
    return {"fast"} if bits == 7 else {"widen", "widen16"}


def check_dispatch(spec, bits: int, meta: dict) -> None:
    kernels = meta["int8_kernels"]
    ops = kernels["ops"]
    assert [o for o in ops if "left_alone" in o] == [], ops
    assert meta["fallbacks"] == [], meta["fallbacks"]
    not_int8 = [r for r in meta["ops"] if r["precision"] not in ("int8", "fused")]
    assert not_int8 == [], not_int8
    assert sorted(o["op"] for o in ops) == ["conv2d"] * 3 + ["matmul"], ops
    want_kernels = {"conv2d_nchwc": 3, "dense": 1}
    if spec.int8.winograd != "none":    # the 3x3 stride-1 conv
        want_kernels = {"conv2d_nchwc": 2, WINOGRAD: 1, "dense": 1}
    assert kernels["by_kernel"] == want_kernels, ops
    for o in ops:
        want = _expected_variants(spec, bits, o["kernel"])
        assert o["variant"] in want, (spec.name, bits, o, want)
        assert o["intrinsic"] == intrinsics.intrin_name(spec.int8.dot_product, o["variant"]), o


def low_precision_ir(model_path, spec):
    """The IR `qcompile build` compiles for `spec` (after the low-precision passes)."""
    im = import_onnx(str(model_path))
    return lp.run(im.mod, lp.LowPrecisionContext(spec=spec, node_names=im.node_names))


@pytest.mark.parametrize("bits", [8, 7], ids=["w8", "w7"])
@pytest.mark.parametrize("target", X86)
def test_whole_model_kernels_and_exact_result(target, bits, models, tmp_path):
    spec = all_targets()[target]
    runnable = spec.runnable_here()
    build(str(models[bits]), BuildConfig(target=target, cross=not runnable, pretuned=False),
          tmp_path / "b", quiet=True)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    check_dispatch(spec, bits, meta)
    if not runnable:
        pytest.skip(f"numerics of target {target!r} not run here: this CPU lacks "
                    f"{', '.join(spec.missing_flags()) or 'an x86-64 ISA'} (cross-built; "
                    "its int8 kernels were checked in model.json)")
    mod = low_precision_ir(models[bits], spec)
    values = {b.var: b.value for blk in mod["main"].body.blocks for b in blk.bindings}
    out = mod["main"].body.body
    while out in values:                 # gv = fc_DequantizeLinear = dequantize(u8 logits)
        out = values[out]
    assert out.op.name == "relax.dequantize" and out.args[0].ty.dtype == "uint8", out
    model = load(tmp_path / "b")
    name = meta["outputs"][0]["name"]
    rng = np.random.default_rng(bits)
    for scale in (1.0, 4.0):             # 4: the input quantizer clips to 0 and 255 as well
        x = (rng.standard_normal((1, 3, 32, 32)) * scale).astype(np.float32)
        got = model({"input": x})[name]
        want = reference.run(mod, [x])
        assert len(np.unique(want)) > 3, want
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{target} w{bits} input x{scale}")


def test_some_x86_target_runs_here():
    """On an x86-64 machine at least one target runs: a CPU-flag reading that failed
    (`targets.cpu_flags()` empty) would otherwise skip every test above."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"not an x86-64 machine ({platform.machine()})")
    assert any(all_targets()[t].runnable_here() for t in X86), sorted(
        (t, all_targets()[t].missing_flags()) for t in X86)
