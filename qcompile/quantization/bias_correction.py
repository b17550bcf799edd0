"""Fast bias correction (the POT / NNCF default) for Conv, ConvTranspose, Gemm and MatMul+Add.

For each quantized linear layer, quantization shifts the mean of its output. With the layer's
fp32 input x, fp32 weight W and quantized weight W_q:

    shift[c] = mean_c( layer(x, W) ) - mean_c( layer(FQ(x), W_q) )

(the mean over every axis but the output channel, over the calibration subset). Adding `shift`
to the bias removes that systematic error. One ONNX Runtime pass over the subset computes it: the
fp32 model plus, for every layer, the means its weight multiplies, of its fp32 input and of the
simulated quantizer's output (see "per-layer means" below; the layer itself is linear in them,
so this is the exact mean, not an approximation). Using fp32 inputs keeps the corrections
independent of each other, as in NNCF's FastBiasCorrection.

A Conv without a bias gets one; a MatMul gets its correction in the `Add` of a constant bias that
follows it; a layer with no place for a bias is reported as not corrected.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .export import quantizer_nodes
from .fake_quantize import quantize_weight
from .graph import Graph, opset_version
from .opinfo import LINEAR_OPS, attr
from .placement import BiasUpdate, Plan
from .progress import Progress
from .runner import RUNS_IN_FLIGHT, Runner, batches


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


# ---- per-layer means -------------------------------------------------------------------------
#
# By linearity the mean output of a layer over every axis but its output channel is the layer's
# weight applied to the mean of what each weight element multiplies: for a Conv, the mean over
# the output positions of every input-channel x tap element of the (zero-padded) input patch
# (two MatMuls with 0/1 tap matrices, `_Builder.patch_means`);
# for Gemm / MatMul, the mean of the input rows. So
#
#     shift = W . P(x) - W_q . P(FQ(x))
#
# needs only P(x) and P(FQ(x)) from the session (a read of the input or two)
# instead of a second, quantized copy of every layer: the pass costs about one fp32 run.
# The arithmetic is the same mean as the copy's (float64 here, float32 there). Ops without a
# rule (ConvTranspose, auto_pad SAME convs, a Gemm / MatMul whose weight is not a constant
# second input, a 3-D conv, shapes not static) still run their quantized copy (`_copy_layer`).

@dataclasses.dataclass
class _Means:
    """The session outputs of one layer's input means and how to turn them into the shift."""
    outputs: list[str]
    shift: Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]


class _Builder:
    """Appends the reduction nodes for the layers' input means to one graph (deduplicated:
    two layers reading the same tensor with the same geometry share them)."""

    def __init__(self, model: ModelProto):
        self.opset = opset_version(model)
        self.nodes: list = []
        self.inits: list = []
        self._done: dict[tuple, str] = {}

    def _const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def reduce_mean(self, x: str, axes: list[int], out: str, keepdims: int) -> None:
        if self.opset >= 18:
            self.nodes.append(helper.make_node(
                "ReduceMean", [x, self._const(out + "/axes", axes)], [out], name=out,
                keepdims=keepdims))
        else:
            self.nodes.append(helper.make_node("ReduceMean", [x], [out], name=out, axes=axes,
                                               keepdims=keepdims))

    def row_mean(self, x: str, rank: int, keep_axis: int) -> str:
        """mean of x over every axis but `keep_axis` -> [K]."""
        key = ("rows", x, keep_axis)
        if key not in self._done:
            out = f"{x}/bias_correction/rows{keep_axis}"
            self.reduce_mean(x, [a for a in range(rank) if a != keep_axis % rank], out, 0)
            self._done[key] = out
        return self._done[key]

    def patch_means(self, x: str, dims: list[int], kernel: list[int], pads: list[int],
                    strides: list[int], dilations: list[int]) -> str:
        """[C, *kernel]: for every input channel and tap of a 1-D / 2-D conv, the mean over
        batch and output positions of the zero-padded input element that tap multiplies.

        Along one spatial axis (length L), tap o at output position j reads index
        `o*d - pad + s*j`, padding when outside [0, L): a 0/1 matrix `A[L, k]` says which
        indices each tap reads, and the means are `A_h^T X A_w / (O_h O_w)`, two MatMuls
        that read the input once (no Pad, no copy per tap)."""
        key = ("patch", x, tuple(dims), tuple(kernel), tuple(pads), tuple(strides),
               tuple(dilations))
        if key in self._done:
            return self._done[key]
        base = f"{x}/bias_correction/p{len(self._done)}"
        sp = len(kernel)
        mats, count = [], 1
        for a in range(sp):
            L, k, s, d = dims[a], kernel[a], strides[a], dilations[a]
            pb, pe = pads[a], pads[sp + a]
            o_len = (L + pb + pe - d * (k - 1) - 1) // s + 1
            m = np.zeros((L, k), np.float32)
            for o in range(k):
                idx = o * d - pb + s * np.arange(o_len)
                m[idx[(idx >= 0) & (idx < L)], o] = 1.0
            mats.append(m)
            count *= o_len
        last = mats[-1] / np.float32(count)
        cur = base + "/w"
        self.inits.append(numpy_helper.from_array(last, cur + "/taps"))
        self.nodes.append(helper.make_node("MatMul", [x, cur + "/taps"], [cur], name=cur))
        if sp == 2:
            nxt = base + "/h"
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(mats[0].T),
                                                      nxt + "/taps"))
            self.nodes.append(helper.make_node("MatMul", [nxt + "/taps", cur], [nxt], name=nxt))
            cur = nxt
        out = base + "/taps"
        self.reduce_mean(cur, [0], out, 0)
        self._done[key] = out
        return out


def _conv_means(b: _Builder, g: Graph, n, x: str, xq: str) -> _Means | None:
    dims = g.static_shape(n.input[0])
    w = g.const(n.input[1])
    if dims is None or len(dims) not in (3, 4) or attr(n, "auto_pad", b"NOTSET") not in (
            b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    sp = len(dims) - 2
    kernel = list(w.shape[2:])
    pads = list(attr(n, "pads", [0] * 2 * sp)) if attr(n, "auto_pad", b"NOTSET") in (
        b"NOTSET", "NOTSET") else [0] * 2 * sp
    strides = list(attr(n, "strides", [1] * sp))
    dil = list(attr(n, "dilations", [1] * sp))
    geo = (dims[2:], kernel, pads, strides, dil)
    px, pq = b.patch_means(x, *geo), b.patch_means(xq, *geo)
    groups = int(attr(n, "group", 1))
    cout, cg = w.shape[0], w.shape[1]

    def shift(out, wf, wq):
        t = int(np.prod(kernel))

        def apply(p, ww):  # p [C, T], ww [Cout, Cg, T] -> [Cout]
            pg = p.reshape(groups, cg, t)
            wg = ww.reshape(groups, cout // groups, cg, t)
            return np.einsum("gocT,gcT->go", wg, pg).reshape(cout)
        return (apply(out[px].astype(np.float64), wf.reshape(cout, cg, t))
                - apply(out[pq].astype(np.float64), wq.reshape(cout, cg, t)))
    return _Means([px, pq], shift)


def _matmul_means(b: _Builder, g: Graph, n, x: str, xq: str) -> _Means | None:
    w = g.const(n.input[1])
    rank = g.rank(n.input[0])
    if w is None or w.ndim != 2 or rank is None:
        return None
    px, pq = b.row_mean(x, rank, -1), b.row_mean(xq, rank, -1)
    return _Means([px, pq], lambda out, wf, wq: (out[px].astype(np.float64) @ wf
                                                  - out[pq].astype(np.float64) @ wq))


def _gemm_means(b: _Builder, g: Graph, n, x: str, xq: str) -> _Means | None:
    w = g.const(n.input[1])
    if w is None or w.ndim != 2:
        return None
    k_axis = 0 if attr(n, "transA", 0) else 1
    px, pq = b.row_mean(x, 2, k_axis), b.row_mean(xq, 2, k_axis)
    alpha = float(attr(n, "alpha", 1.0))
    tb = bool(attr(n, "transB", 0))

    def shift(out, wf, wq):
        wf, wq = (wf.T, wq.T) if tb else (wf, wq)
        return alpha * (out[px].astype(np.float64) @ wf - out[pq].astype(np.float64) @ wq)
    return _Means([px, pq], shift)


# op type -> builder of its input means (None: no rule for this node, run the copy)
MEAN_RULES: dict[str, Callable] = {"Conv": _conv_means, "Gemm": _gemm_means,
                                   "MatMul": _matmul_means}


def _copy_layer(b: _Builder, g: Graph, n, new_inputs: list[str]) -> _Means:
    """The layer run again on its quantized inputs; the mean difference reduced in the graph."""
    name = n.name
    yq = f"{name}/bias_correction/q"
    copy = helper.make_node(n.op_type, new_inputs, [yq], name=name + "/bias_correction")
    copy.attribute.extend(n.attribute)
    b.nodes.append(copy)
    rank = g.rank(n.output[0])
    if not rank:
        def shift(out, wf, wq):
            d = out[n.output[0]].astype(np.float64) - out[yq]
            ax = LINEAR_OPS[n.op_type].output_channel_axis(n, d.ndim) % d.ndim
            return np.moveaxis(d, ax, -1).reshape(-1, d.shape[ax]).mean(axis=0)
        return _Means([n.output[0], yq], shift)
    ax = LINEAR_OPS[n.op_type].output_channel_axis(n, rank) % rank
    d, mean = f"{name}/bias_correction/diff", f"{name}/bias_correction/mean"
    b.nodes.append(helper.make_node("Sub", [n.output[0], yq], [d], name=d))
    b.reduce_mean(d, [i for i in range(rank) if i != ax], mean, 0)
    return _Means([mean], lambda out, wf, wq: out[mean].astype(np.float64).reshape(-1))


def correct(model: ModelProto, g: Graph, plan: Plan, samples: list[dict[str, np.ndarray]],
            batch_size: int = 1, threads: int | None = None, progress: bool | None = None
            ) -> dict[str, str]:
    """Fill `plan.bias_updates`; returns {node: why not corrected} for skipped layers.

    The session outputs are means, so their average over the subset is all that is kept
    (float64 sums, a few numbers per layer); the weights enter once per layer at the end."""
    skipped: dict[str, str] = {}
    sites: dict[str, BiasSite] = {}
    means: dict[str, _Means] = {}
    b = _Builder(model)
    emitted: set[str] = set()

    def fq(qid: str) -> str:
        if qid not in emitted:
            qi = plan.quantizers[qid]
            nodes, inits = quantizer_nodes(qi, "sim", g, g.rank(qi.tensor))
            b.nodes.extend(nodes)
            b.inits.extend(inits)
            emitted.add(qid)
        return f"{qid}/fq"

    for name, qop in plan.ops.items():
        if qop.op_type not in LINEAR_OPS:
            continue
        n = g.by_name[name]
        lin = LINEAR_OPS[n.op_type]
        wq_id = qop.inputs.get(lin.weight_input)
        if wq_id is None or plan.quantizers[wq_id].kind != "weight":
            skipped[name] = "weight is not a quantized constant"
            continue
        w = g.const(n.input[lin.weight_input])
        wax = plan.quantizers[wq_id].axis
        if wax is None:
            wax = lin.weight_channel_axis(n, w.ndim) % w.ndim
        oc = w.shape[wax] * (int(attr(n, "group", 1)) if n.op_type == "ConvTranspose" else 1)
        site = find_bias(g, n, oc)
        if site is None:
            skipped[name] = "no constant bias to correct"
            continue
        rule = MEAN_RULES.get(n.op_type) if lin.weight_input == 1 else None
        x = n.input[0]
        m = rule(b, g, n, x, fq(qop.inputs[0]) if 0 in qop.inputs else x) if rule else None
        if m is None:            # no rule: the quantized copy, on every quantized input
            new_inputs = list(n.input)
            for i, qid in qop.inputs.items():
                new_inputs[i] = fq(qid)
            m = _copy_layer(b, g, n, new_inputs)
        means[name] = m
        sites[name] = site
    if not sites:
        return skipped
    outputs = sorted({o for mm in means.values() for o in mm.outputs})

    def extend(m: ModelProto) -> ModelProto:
        out = ModelProto()
        out.CopyFrom(m)
        out.graph.node.extend(b.nodes)
        out.graph.initializer.extend(b.inits)
        # all float32: declared here, so the runner need not type them by shape inference
        have = {o.name for o in out.graph.output}
        out.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                for o in outputs if o not in have)
        return out
    runner = Runner(model, threads=threads, edit=extend, workers=RUNS_IN_FLIGHT)
    sums: dict[str, np.ndarray] = {}
    count = 0
    groups = list(batches(samples, batch_size))
    with Progress(len(samples), "fast bias correction", progress) as bar:
        for (feed, nb), out in zip(groups, runner.run_all((f for f, _ in groups), outputs)):
            for o in outputs:
                v = out[o].astype(np.float64) * nb
                sums[o] = sums[o] + v if o in sums else v
            count += nb
            bar.update(nb)
    avg = {o: v / max(count, 1) for o, v in sums.items()}
    for name, site in sites.items():
        n = g.by_name[name]
        lin = LINEAR_OPS[n.op_type]
        q = plan.quantizers[plan.ops[name].inputs[lin.weight_input]]
        w = g.const(n.input[lin.weight_input])
        wq = quantize_weight(w, q.input_low, q.input_high, q.axis, q.levels)
        shift = means[name].shift(avg, w.astype(np.float64), wq.astype(np.float64)).reshape(-1)
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
