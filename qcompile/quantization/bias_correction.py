"""Fast bias correction (the POT / NNCF default) for Conv, ConvTranspose, Gemm and MatMul+Add.

For each quantized linear layer, quantization shifts the mean of its output. With the layer's
fp32 input x, fp32 weight W and quantized weight W_q:

    shift[c] = mean_c( layer(x, W) ) - mean_c( layer(FQ(x), W_q) )

(the mean over every axis but the output channel, over the calibration subset). Adding `shift`
to the bias removes that systematic error. Both outputs are computed in one ONNX Runtime pass:
the fp32 model plus, for every layer, a copy of the layer fed by the simulated quantizer and the
quantized weight. This is the exact mean (no linearisation), and using fp32 inputs keeps the
corrections independent of each other, as in NNCF's FastBiasCorrection.

A Conv without a bias gets one; a MatMul gets its correction in the `Add` of a constant bias that
follows it; a layer with no place for a bias is reported as not corrected.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from .export import quantizer_nodes
from .graph import Graph, opset_version
from .opinfo import LINEAR_OPS, attr
from .placement import BiasUpdate, Plan
from .progress import Progress
from .runner import Runner, batches


@dataclasses.dataclass
class BiasSite:
    node: str
    tensor: str | None      # the bias initializer (None: the layer has none yet)
    holder: str             # the node whose input holds it
    index: int
    channels: int
    scale: float = 1.0      # Gemm beta


def find_bias(g: Graph, n, out_channels: int) -> BiasSite | None:
    lin = LINEAR_OPS[n.op_type]
    if lin.bias_input is not None:
        if len(n.input) > lin.bias_input and n.input[lin.bias_input]:
            b = g.const(n.input[lin.bias_input])
            if b is None or b.size != out_channels or (b.ndim > 1 and b.shape[-1] != b.size):
                return None
            beta = float(attr(n, "beta", 1.0)) if n.op_type == "Gemm" else 1.0
            return BiasSite(n.name, n.input[lin.bias_input], n.name, lin.bias_input,
                            out_channels, beta) if beta != 0 else None
        if n.op_type in ("Conv", "ConvTranspose"):
            return BiasSite(n.name, None, n.name, lin.bias_input, out_channels)
        return None
    # MatMul: a following Add of a constant vector on the last axis
    cons = g.consumers.get(n.output[0], [])
    if len(cons) != 1 or cons[0][0].op_type != "Add" or n.output[0] in g.graph_outputs:
        return None
    add, i = cons[0]
    other = add.input[1 - i]
    b = g.const(other)
    if b is None or b.size != out_channels or (b.ndim > 1 and b.shape[-1] != b.size):
        return None
    return BiasSite(n.name, other, add.name, 1 - i, out_channels)


def subset(samples: list, n: int) -> list:
    """`n` samples spread evenly over `samples` (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(samples):
        return samples
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, n).round()]


def correct(model: ModelProto, g: Graph, plan: Plan, samples: list[dict[str, np.ndarray]],
            batch_size: int = 1, threads: int | None = None, progress: bool | None = None
            ) -> dict[str, str]:
    """Fill `plan.bias_updates`; returns {node: why not corrected} for skipped layers."""
    skipped: dict[str, str] = {}
    sites: dict[str, BiasSite] = {}
    extra_nodes, extra_inits, outputs = [], [], []
    emitted: set[str] = set()
    for name, qop in plan.ops.items():
        if qop.op_type not in LINEAR_OPS:
            continue
        n = g.by_name[name]
        lin = LINEAR_OPS[n.op_type]
        wq = qop.inputs.get(lin.weight_input)
        if wq is None or plan.quantizers[wq].kind != "weight":
            skipped[name] = "weight is not a quantized constant"
            continue
        w = g.const(n.input[lin.weight_input])
        wax = plan.quantizers[wq].axis
        if wax is None:
            wax = lin.weight_channel_axis(n, w.ndim) % w.ndim
        oc = w.shape[wax] * (int(attr(n, "group", 1)) if n.op_type == "ConvTranspose" else 1)
        site = find_bias(g, n, oc)
        if site is None:
            skipped[name] = "no constant bias to correct"
            continue
        new_inputs = list(n.input)
        for i, qid in qop.inputs.items():
            q = plan.quantizers[qid]
            if qid not in emitted:
                nodes, inits = quantizer_nodes(q, "sim", g, g.rank(q.tensor))
                extra_nodes += nodes
                extra_inits += inits
                emitted.add(qid)
            new_inputs[i] = f"{qid}/fq"
        yq = f"{name}/bias_correction/q"
        copy = helper.make_node(n.op_type, new_inputs, [yq], name=name + "/bias_correction")
        copy.attribute.extend(n.attribute)
        extra_nodes.append(copy)
        rank = g.rank(n.output[0])
        if rank:                      # reduce in the graph: only C numbers leave the session
            ax = LINEAR_OPS[n.op_type].output_channel_axis(n, rank) % rank
            axes = [i for i in range(rank) if i != ax]
            d, mean = f"{name}/bias_correction/diff", f"{name}/bias_correction/mean"
            extra_nodes.append(helper.make_node("Sub", [n.output[0], yq], [d], name=d))
            if opset_version(model) >= 18:
                extra_inits.append(numpy_helper.from_array(np.array(axes, np.int64), d + "/axes"))
                extra_nodes.append(helper.make_node("ReduceMean", [d, d + "/axes"], [mean],
                                                    name=mean, keepdims=0))
            else:
                extra_nodes.append(helper.make_node("ReduceMean", [d], [mean], name=mean,
                                                    axes=axes, keepdims=0))
            outputs.append(mean)
        else:
            outputs += [n.output[0], yq]
        sites[name] = site
    if not sites:
        return skipped
    m = ModelProto()
    m.CopyFrom(model)
    m.graph.node.extend(extra_nodes)
    m.graph.initializer.extend(extra_inits)
    runner = Runner(m, outputs, threads=threads)
    sums = {k: np.zeros(s.channels) for k, s in sites.items()}
    counts = {k: 0 for k in sites}
    with Progress(len(samples), "fast bias correction", progress) as bar:
        for feed, nb in batches(samples, batch_size):
            out = runner.run(feed, outputs)
            for name in sites:
                mean = out.get(f"{name}/bias_correction/mean")
                if mean is not None:
                    sums[name] += mean.astype(np.float64).reshape(-1) * nb
                    counts[name] += nb
                    continue
                n = g.by_name[name]
                d = out[n.output[0]].astype(np.float64) - out[f"{name}/bias_correction/q"]
                ax = LINEAR_OPS[n.op_type].output_channel_axis(n, d.ndim) % d.ndim
                d = np.moveaxis(d, ax, -1).reshape(-1, d.shape[ax])
                sums[name] += d.mean(axis=0) * nb
                counts[name] += nb
            bar.update(nb)
    for name, site in sites.items():
        shift = sums[name] / max(counts[name], 1)
        old = g.const(site.tensor) if site.tensor else np.zeros(site.channels, np.float32)
        new = (old.reshape(-1).astype(np.float64) + shift / site.scale).reshape(old.shape)
        if not np.isfinite(new.astype(np.float32)).all():
            # NaN/Inf in the calibration data, or values whose fp32 / quantized difference
            # overflows: a corrected bias would poison the layer, so it keeps its own
            skipped[name] = ("the measured output shift is not finite (calibration data "
                             "holds NaN/Inf or values beyond float32 range); bias kept")
            continue
        plan.bias_updates[name] = BiasUpdate(site.tensor or "", site.holder, site.index,
                                             new.astype(np.float32), shift / site.scale)
    return skipped


__all__ = ["correct", "find_bias"]
