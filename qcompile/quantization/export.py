"""Writing a quantization plan into an ONNX model, in one of three forms.

* "fq"  — OpenVINO `FakeQuantize` (domain `org.openvinotoolkit`, opset 1), inputs
          (X, input_low, input_high, output_low, output_high) with output range == input range,
          attribute `levels`. Weights keep their fp32 values behind a per-channel FakeQuantize
          (ranges shaped to broadcast on the output-channel axis), as NNCF writes them; this is
          what `openvino.Core().read_model()` and qcompile's frontend read.
* "qdq" — ONNX QuantizeLinear -> DequantizeLinear on activations, int8 weights behind a
          per-channel DequantizeLinear (opset >= 13; older models are converted), loadable by
          ONNX Runtime and most toolchains.
* "sim" — the FakeQuantize formula spelled with standard ops (Clip, Sub, Mul, Round, Mul,
          Add) and weights replaced by their quantized values: runs in ONNX Runtime with the
          FakeQuantize numerics (up to float rounding next to exact ties); used internally for
          bias correction, the accuracy-aware loop and `qcompile debug`.

Nodes keep their names; a quantizer's output tensor is `<tensor>/fq`. Corrected biases become
new initializers `<node>/bias_corrected`.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ..errors import QuantizationError
from ..frontend import large_model
from .fake_quantize import broadcast_shape, check_range, qdq_params, quantize_weight
from .graph import Graph, opset_version
from .placement import Plan, Quantizer

OV_DOMAIN = "org.openvinotoolkit"
FORMATS = ("fq", "qdq")
REPORT_KEY = "qcompile.quantization"


def fq_output(q: Quantizer) -> str:
    return f"{q.qid}/fq"


def quantizer_nodes(q: Quantizer, fmt: str, g: Graph, rank: int | None = None
                    ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes and initializers computing `<qid>/fq` from `q.tensor` in format `fmt`."""
    il, ih = np.asarray(q.input_low, np.float32), np.asarray(q.input_high, np.float32)
    check_range(il, ih, f"quantizer of {q.tensor!r}")
    out, base = fq_output(q), q.qid + "/fq"
    w = g.const(q.tensor) if q.kind == "weight" else None
    if w is not None:
        rank = w.ndim
    ilb, ihb = (broadcast_shape(v, rank or 0, q.axis) for v in (il, ih))
    if fmt == "fq":
        inits = [numpy_helper.from_array(ilb, base + "/low"),
                 numpy_helper.from_array(ihb, base + "/high")]
        node = helper.make_node("FakeQuantize", [q.tensor, base + "/low", base + "/high",
                                                 base + "/low", base + "/high"], [out],
                                name=base, domain=OV_DOMAIN, levels=int(q.levels))
        return [node], inits
    if fmt == "qdq":
        p = qdq_params(il, ih, q.levels, f"quantizer of {q.tensor!r}")
        axis_attr = {"axis": int(q.axis)} if q.axis is not None and p.scale.size > 1 else {}
        scale = numpy_helper.from_array(p.scale.reshape(-1) if axis_attr else p.scale.reshape(()),
                                        base + "/scale")
        zp = numpy_helper.from_array(p.zero_point.reshape(-1) if axis_attr else
                                     p.zero_point.reshape(()), base + "/zero_point")
        if w is not None:
            s = broadcast_shape(p.scale, w.ndim, q.axis).astype(np.float64)
            zpb = broadcast_shape(p.zero_point, w.ndim, q.axis).astype(np.float64)
            info = np.iinfo(np.dtype(p.dtype))
            wq = np.clip(np.round(w / s) + zpb, info.min, info.max).astype(p.dtype)
            qw = numpy_helper.from_array(wq, base + "/quantized")
            node = helper.make_node("DequantizeLinear", [qw.name, scale.name, zp.name], [out],
                                    name=base + "/dequantize", **axis_attr)
            return [node], [qw, scale, zp]
        qn = helper.make_node("QuantizeLinear", [q.tensor, scale.name, zp.name], [base + "/q"],
                              name=base + "/quantize", **axis_attr)
        dn = helper.make_node("DequantizeLinear", [base + "/q", scale.name, zp.name], [out],
                              name=base + "/dequantize", **axis_attr)
        return [qn, dn], [scale, zp]
    if fmt == "sim":
        if w is not None:
            wq = quantize_weight(w, il, ih, q.axis, q.levels)
            return [helper.make_node("Identity", [base + "/value"], [out], name=base)], \
                [numpy_helper.from_array(wq.astype(np.float32), base + "/value")]
        return sim_nodes(q.tensor, out, ilb, ihb, q.levels, base)
    raise QuantizationError(f"unknown output format {fmt!r} (--format): use one of {FORMATS}")


def sim_nodes(x: str, out: str, il: np.ndarray, ih: np.ndarray, levels: int, base: str):
    """FakeQuantize(x; il, ih, il, ih, levels) with standard ONNX ops (opset >= 11)."""
    il64, ih64 = il.astype(np.float64), ih.astype(np.float64)
    consts = {
        "lo": np.minimum(il, ih), "hi": np.maximum(il, ih), "il": il,
        "k": ((levels - 1) / (ih64 - il64)).astype(np.float32),
        "s": ((ih64 - il64) / (levels - 1)).astype(np.float32),
    }
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), f"{base}/{k}")
             for k, v in consts.items()]
    c = f"{base}/"
    per_tensor = all(np.asarray(v).size == 1 for v in consts.values())
    if per_tensor:
        inits = [numpy_helper.from_array(np.asarray(v, np.float32).reshape(()), f"{base}/{k}")
                 for k, v in consts.items()]
        clip = helper.make_node("Clip", [x, c + "lo", c + "hi"], [c + "clip"], name=c + "clip")
    else:
        mx = helper.make_node("Max", [x, c + "lo"], [c + "max"], name=c + "max")
        clip = helper.make_node("Min", [c + "max", c + "hi"], [c + "clip"], name=c + "clip")
    nodes = [] if per_tensor else [mx]
    nodes += [clip,
              helper.make_node("Sub", [c + "clip", c + "il"], [c + "sub"], name=c + "sub"),
              helper.make_node("Mul", [c + "sub", c + "k"], [c + "norm"], name=c + "norm"),
              helper.make_node("Round", [c + "norm"], [c + "round"], name=c + "round"),
              helper.make_node("Mul", [c + "round", c + "s"], [c + "scaled"], name=c + "scaled"),
              helper.make_node("Add", [c + "scaled", c + "il"], [out], name=c + "add")]
    return nodes, inits


def write(model: ModelProto, plan: Plan, fmt: str, reverted: set[str] = frozenset(),
          report: dict | None = None, bias_correction: bool = True) -> ModelProto:
    """The quantized model: `model` (prepared, fp32) with the plan's quantizers inserted."""
    if fmt == "qdq" and opset_version(model) < 13:
        model = upgrade_opset(model, 13)
    m = ModelProto()
    m.CopyFrom(model)
    g = Graph(m)
    ops, used = plan.active(reverted)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    emitted: set[str] = set()
    for n in list(m.graph.node):
        qop = ops.get(n.name)
        if qop is not None:
            for i, qid in qop.inputs.items():
                q = plan.quantizers[qid]
                if qid not in emitted:
                    nodes, inits = quantizer_nodes(q, fmt, g, g.rank(q.tensor))
                    new_nodes.extend(nodes)
                    new_inits.extend(inits)
                    emitted.add(qid)
                n.input[i] = fq_output(q)
        new_nodes.append(n)
    if bias_correction:
        by_holder = {}
        for node_name, u in plan.bias_updates.items():
            if node_name in ops:
                by_holder[u.holder] = (node_name, u.index, u.values)
        for n in new_nodes:
            if n.name in by_holder:
                node_name, idx, values = by_holder[n.name]
                name = f"{node_name}/bias_corrected"
                new_inits.append(numpy_helper.from_array(values.astype(np.float32), name))
                while len(n.input) <= idx:
                    n.input.append("")
                n.input[idx] = name
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    m.graph.initializer.extend(new_inits)
    _drop_unused(m)
    if fmt == "fq" and used and not any(o.domain == OV_DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(OV_DOMAIN, 1))
    if report is not None:
        set_report(m, report)
    return m


def _drop_unused(m: ModelProto) -> None:
    used = {t for n in m.graph.node for t in n.input} | {o.name for o in m.graph.output}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


def upgrade_opset(model: ModelProto, version: int) -> ModelProto:
    from google.protobuf.message import Error as ProtobufError
    from onnx import version_converter

    # the converter serializes: above 2 GB it converts a copy without the weights' data
    large = large_model.needs_external(model)
    try:
        out = version_converter.convert_version(large_model.strip(model) if large else model,
                                                version)
        return large_model.restore(out, model) if large else out
    # RuntimeError: no adapter / an adapter's assertion; the rest from its C++ and protobuf
    except (RuntimeError, ValueError, onnx.shape_inference.InferenceError,
            onnx.checker.ValidationError, ProtobufError) as err:
        raise QuantizationError(
            f"--format qdq needs opset >= {version} (per-channel DequantizeLinear) and converting "
            f"the model from opset {opset_version(model)} failed: {err}. Use --format fq.") from err


def set_report(m: ModelProto, report: dict) -> None:
    for p in list(m.metadata_props):
        if p.key == REPORT_KEY:
            m.metadata_props.remove(p)
    m.metadata_props.append(onnx.StringStringEntryProto(key=REPORT_KEY,
                                                        value=json.dumps(report, default=_js)))


def get_report(m: ModelProto) -> dict | None:
    for p in m.metadata_props:
        if p.key == REPORT_KEY:
            return json.loads(p.value)
    return None


def _js(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    return str(v)
