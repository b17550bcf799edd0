"""`qcompile debug`: where does quantization error enter? (like ORT's qdq_loss_debug)

Runs the fp32 model and the quantized model (FakeQuantize or QDQ; FakeQuantize is emulated
with standard ops, QDQ runs unfused) on the same samples and compares every tensor the
two graphs share by name: SQNR (dB), cosine similarity and max abs error, accumulated over the
samples with running sums (bounded memory). For each quantizer it also reports its own error
(its input vs its output inside the quantized model). The rows come in topological order, so a
sharp SQNR drop marks where error enters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, numpy_helper

from ..errors import QuantizationError
from .datasets import DatasetConfig, make_dataset, take
from .export import OV_DOMAIN, sim_nodes
from .graph import load_model
from .progress import Progress
from .runner import Runner, elem_types


@dataclasses.dataclass
class _Acc:
    sig: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    qq: float = 0.0
    max_err: float = 0.0
    n: int = 0

    def add(self, r: np.ndarray, q: np.ndarray) -> None:
        r, q = r.astype(np.float64).reshape(-1), q.astype(np.float64).reshape(-1)
        if r.shape != q.shape:
            return
        d = r - q
        self.sig += float(r @ r)
        self.noise += float(d @ d)
        self.dot += float(r @ q)
        self.qq += float(q @ q)
        self.max_err = max(self.max_err, float(np.abs(d).max()) if d.size else 0.0)
        self.n += 1

    def sqnr(self) -> float:
        if self.noise == 0:
            return float("inf")
        return float(10 * np.log10(self.sig / self.noise)) if self.sig > 0 else float("-inf")

    def cosine(self) -> float:
        den = np.sqrt(self.sig * self.qq)
        return float(self.dot / den) if den > 0 else (1.0 if self.sig == self.qq else 0.0)


@dataclasses.dataclass
class Row:
    index: int
    node: str
    op_type: str
    tensor: str
    quantized_inputs: bool
    sqnr_db: float
    cosine: float
    max_abs_err: float


@dataclasses.dataclass
class QuantizerRow:
    tensor: str
    node: str
    levels: int
    sqnr_db: float


@dataclasses.dataclass
class DebugResult:
    rows: list[Row]
    quantizers: list[QuantizerRow]
    samples: int
    outputs: list[str]

    def to_dict(self) -> dict:
        return {"samples": self.samples, "outputs": self.outputs,
                "layers": [dataclasses.asdict(r) for r in self.rows],
                "quantizers": [dataclasses.asdict(q) for q in self.quantizers]}

    def table(self, limit: int | None = None) -> str:
        lines = [f"{'#':>4}  {'node':<40} {'op':<18} {'SQNR dB':>8} {'cosine':>9} "
                 f"{'max err':>10}  q"]
        rows = self.rows if limit is None else self.rows[:limit]
        prev = None
        for r in rows:
            mark = ""
            if prev is not None and np.isfinite(prev) and np.isfinite(r.sqnr_db) and \
                    prev - r.sqnr_db >= 3:
                mark = f"  <- {prev - r.sqnr_db:.1f} dB"
            lines.append(f"{r.index:>4}  {r.node[:40]:<40} {r.op_type[:18]:<18} "
                         f"{_f(r.sqnr_db):>8} {r.cosine:>9.5f} {r.max_abs_err:>10.3g}  "
                         f"{'*' if r.quantized_inputs else ' '}{mark}")
            prev = r.sqnr_db
        if limit is not None and len(self.rows) > limit:
            lines.append(f"... {len(self.rows) - limit} more rows")
        lines.append("q: * = the op reads quantized inputs; '<- x dB': SQNR fell by x dB here")
        return "\n".join(lines)


def _f(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.2f}"


def emulated(model: ModelProto) -> tuple[ModelProto, dict[str, tuple[str, int]]]:
    """FakeQuantize nodes replaced by their exact standard-op emulation; also returns
    {fq output: (fq input, levels)}."""
    m = ModelProto()
    m.CopyFrom(model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes, extra, fqs = [], [], {}
    for n in m.graph.node:
        if n.op_type == "FakeQuantize" and n.domain == OV_DOMAIN:
            vals = [inits.get(t) for t in n.input[1:5]]
            if any(v is None for v in vals):
                raise QuantizationError(f"FakeQuantize {n.name!r}: range inputs must be "
                                        "constants to be emulated")
            il, ih, ol, oh = (np.asarray(v, np.float32) for v in vals)
            if not (np.array_equal(il, ol) and np.array_equal(ih, oh)):
                raise QuantizationError(f"FakeQuantize {n.name!r}: output range differs from the "
                                        "input range; only qcompile/NNCF-style FQ is emulated")
            levels = next(a.i for a in n.attribute if a.name == "levels")
            nn, ii = sim_nodes(n.input[0], n.output[0], il, ih, levels, n.name + "/emul")
            nodes += nn
            extra += ii
            fqs[n.output[0]] = (n.input[0], levels)
        elif n.op_type == "QuantizeLinear":
            nodes.append(n)
        else:
            nodes.append(n)
            if n.op_type == "DequantizeLinear":
                fqs[n.output[0]] = (n.input[0], 256)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(extra)
    keep = [o for o in m.opset_import if o.domain != OV_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m, fqs


def compare(fp32: str | ModelProto, quantized: str | ModelProto, data: Any,
            dataset_config: DatasetConfig | None = None, subset_size: int = 32,
            threads: int | None = None, progress: bool | None = None) -> DebugResult:
    fm, qm = load_model(fp32), load_model(quantized)
    fm, _ = emulated(fm)          # the reference may itself be quantized (compare two models)
    qe, fqs = emulated(qm)
    # QDQ: trace the quantize input of each DequantizeLinear back to the float tensor
    producers = {o: n for n in qe.graph.node for o in n.output}
    quant_in = {}
    for out, (src, levels) in fqs.items():
        p = producers.get(src)
        if p is not None and p.op_type == "QuantizeLinear":
            quant_in[out] = (p.input[0], levels)
        elif src not in {t.name for t in qe.graph.initializer}:
            quant_in[out] = (src, levels)
    ftypes = elem_types(fm)
    f_tensors = {o for n in fm.graph.node for o in n.output
                 if ftypes.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT}
    rows_src = []
    for n in qe.graph.node:
        if n.name.endswith("/emul/add") or n.op_type in ("QuantizeLinear", "DequantizeLinear") \
                or "/emul/" in n.name:
            continue
        for o in n.output:
            if o in f_tensors:
                q_in = any(t in fqs for t in n.input)
                rows_src.append((n.name, n.op_type, o, q_in))
                break
    common = [r[2] for r in rows_src]
    q_inputs = {i.name for i in qe.graph.input}
    qextra = sorted((set(common) | {v[0] for v in quant_in.values()} | set(quant_in)) - q_inputs)
    fr = Runner(fm, common, threads=threads, optimize=False)
    qr = Runner(qe, qextra, threads=threads, optimize=False)
    ds = make_dataset(data, fm, dataset_config)
    accs = {t: _Acc() for t in common}
    qaccs = {t: _Acc() for t in quant_in}
    n = 0
    samples = list(take(ds, subset_size))
    if not samples:
        raise QuantizationError("qcompile debug: the dataset is empty")
    with Progress(len(samples), "comparing layers", progress) as bar:
        for s in samples:
            fo = fr.run(s, common)
            qo = qr.run(s, qextra)
            for t in common:
                if np.issubdtype(fo[t].dtype, np.floating):
                    accs[t].add(fo[t], qo[t])
            for out, (src, _) in quant_in.items():
                x = s[src] if src in s else qo.get(src)
                if x is not None and np.issubdtype(np.asarray(x).dtype, np.floating):
                    qaccs[out].add(np.asarray(x), qo[out])
            n += 1
            bar.update()
    rows = [Row(i, name, op, t, q, accs[t].sqnr(), accs[t].cosine(), accs[t].max_err)
            for i, (name, op, t, q) in enumerate(r for r in rows_src if accs[r[2]].n)]
    qrows = [QuantizerRow(src, out, levels, qaccs[out].sqnr())
             for out, (src, levels) in quant_in.items() if qaccs[out].n]
    return DebugResult(rows, qrows, n, [o.name for o in fm.graph.output])


__all__ = ["compare", "emulated", "DebugResult"]
