"""ONNX `LSTM` and `GRU` (TVM 0.27's Relax importer has neither), unrolled over the static
sequence length into matmul / add / sigmoid / tanh ops, for layout 0, any direction
(forward, reverse, bidirectional), optional bias, initial states and LSTM peepholes.

They stay f32 (no quantization rule covers a recurrent cell); the matmuls are ordinary
Relax matmuls the build schedules like any other. What is not supported raises a
ModelError naming the node: non-default activations, `clip`, `input_forget`, layout 1,
`sequence_lens` (variable-length batches), a sequence length that is not static.
"""
from __future__ import annotations

from ...errors import ModelError
from ..registry import register_converter
from ._util import attr_str, node_name

_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _check(op: str, inputs, attr) -> tuple[int, int]:
    name = node_name(attr)
    acts = [attr_str(a) for a in attr.get("activations", [])]
    dirs = 2 if attr_str(attr.get("direction", "forward")) == "bidirectional" else 1
    if acts and [a.lower() for a in acts] != [a.lower() for a in _DEFAULT_ACTS[op] * dirs]:
        raise ModelError(f"{op} {name!r}: activations {acts} are not supported (only the "
                         f"defaults {_DEFAULT_ACTS[op]})")
    for key in ("clip", "input_forget", "layout"):
        if attr.get(key):
            raise ModelError(f"{op} {name!r}: attribute {key}={attr[key]} is not supported")
    if len(inputs) > 4 and inputs[4] is not None:
        raise ModelError(f"{op} {name!r}: sequence_lens (variable-length sequences) is not "
                         "supported; drop the input when every sequence has full length")
    shape = inputs[0].ty.shape
    try:
        seq = int(shape[0])
    except (TypeError, ValueError):
        raise ModelError(f"{op} {name!r}: the sequence length {shape[0]} is not static; fix "
                         "it with --input-shape") from None
    return seq, dirs


def _dir_slice(bb, t, d):
    from tvm import relax
    return bb.emit(relax.op.squeeze(relax.op.strided_slice(t, [0], [d], [d + 1]), [0]))


def _gates(bb, x_t, h, w, r, b, n):
    """x_t W^T + h R^T + b, split into n gates of `hidden` each."""
    from tvm import relax
    z = relax.op.add(relax.op.matmul(x_t, relax.op.permute_dims(w)),
                     relax.op.matmul(h, relax.op.permute_dims(r)))
    if b is not None:
        z = relax.op.add(z, b)
    return bb.emit(relax.op.split(bb.emit(z), n, axis=-1))


def _initial(bb, inputs, idx, d, shape, dtype):
    from tvm import relax
    if len(inputs) > idx and inputs[idx] is not None:
        return _dir_slice(bb, inputs[idx], d)
    return relax.op.zeros(shape, dtype)


@register_converter("LSTM")
class LSTM:
    @classmethod
    def get_converter(cls, opset):
        def convert(bb, inputs, attr, params):
            from tvm import relax
            seq, dirs = _check("LSTM", inputs, attr)
            x, w, r = inputs[0], inputs[1], inputs[2]
            hidden = int(attr.get("hidden_size") or int(r.ty.shape[-1]))
            batch, dtype = int(x.ty.shape[1]), str(x.ty.dtype)
            reverse = attr_str(attr.get("direction", "forward")) == "reverse"
            ys, hs, cs = [], [], []
            sig, tanh = relax.op.sigmoid, relax.op.tanh
            for d in range(dirs):
                wd, rd = _dir_slice(bb, w, d), _dir_slice(bb, r, d)
                b = None
                if len(inputs) > 3 and inputs[3] is not None:
                    bd = _dir_slice(bb, inputs[3], d)
                    halves = bb.emit(relax.op.split(bd, 2, axis=0))
                    b = bb.emit(relax.op.add(halves[0], halves[1]))
                h = _initial(bb, inputs, 5, d, (batch, hidden), dtype)
                c = _initial(bb, inputs, 6, d, (batch, hidden), dtype)
                peep = None
                if len(inputs) > 7 and inputs[7] is not None:
                    peep = bb.emit(relax.op.split(_dir_slice(bb, inputs[7], d), 3, axis=0))
                steps = list(range(seq))
                if reverse or d == 1:
                    steps.reverse()
                out = [None] * seq
                for t in steps:
                    x_t = bb.emit(relax.op.squeeze(
                        relax.op.strided_slice(x, [0], [t], [t + 1]), [0]))
                    g = _gates(bb, x_t, h, wd, rd, b, 4)      # i, o, f, c
                    gi, go, gf, gc = (g[k] for k in range(4))
                    if peep is not None:
                        gi = relax.op.add(gi, relax.op.multiply(peep[0], c))
                        gf = relax.op.add(gf, relax.op.multiply(peep[2], c))
                    c = bb.emit(relax.op.add(relax.op.multiply(sig(gf), c),
                                             relax.op.multiply(sig(gi), tanh(gc))))
                    if peep is not None:
                        go = relax.op.add(go, relax.op.multiply(peep[1], c))
                    h = bb.emit(relax.op.multiply(sig(go), tanh(c)))
                    out[t] = h
                ys.append(bb.emit(relax.op.stack(out, axis=0)))   # [seq, batch, hidden]
                hs.append(h)
                cs.append(c)
            y = bb.emit(relax.op.stack(ys, axis=1))                 # [seq, dirs, batch, hidden]
            return relax.Tuple([y, bb.emit(relax.op.stack(hs, axis=0)),
                                bb.emit(relax.op.stack(cs, axis=0))])

        return convert


@register_converter("GRU")
class GRU:
    @classmethod
    def get_converter(cls, opset):
        def convert(bb, inputs, attr, params):
            from tvm import relax
            seq, dirs = _check("GRU", inputs, attr)
            x, w, r = inputs[0], inputs[1], inputs[2]
            hidden = int(attr.get("hidden_size") or int(r.ty.shape[-1]))
            batch, dtype = int(x.ty.shape[1]), str(x.ty.dtype)
            reverse = attr_str(attr.get("direction", "forward")) == "reverse"
            lbr = bool(attr.get("linear_before_reset", 0))
            sig, tanh = relax.op.sigmoid, relax.op.tanh
            ys, hs = [], []
            for d in range(dirs):
                wd, rd = _dir_slice(bb, w, d), _dir_slice(bb, r, d)
                wz, wr, wh = (bb.emit(relax.op.split(wd, 3, axis=0))[k] for k in range(3))
                rz, rr, rh = (bb.emit(relax.op.split(rd, 3, axis=0))[k] for k in range(3))
                if len(inputs) > 3 and inputs[3] is not None:
                    bs = bb.emit(relax.op.split(_dir_slice(bb, inputs[3], d), 6, axis=0))
                    wbz, wbr, wbh, rbz, rbr, rbh = (bs[k] for k in range(6))
                else:
                    wbz = wbr = wbh = rbz = rbr = rbh = relax.op.zeros((hidden,), dtype)
                h = _initial(bb, inputs, 5, d, (batch, hidden), dtype)
                steps = list(range(seq))
                if reverse or d == 1:
                    steps.reverse()
                out = [None] * seq

                def lin(a, m, bias):
                    return relax.op.add(relax.op.matmul(a, relax.op.permute_dims(m)), bias)
                for t in steps:
                    x_t = bb.emit(relax.op.squeeze(
                        relax.op.strided_slice(x, [0], [t], [t + 1]), [0]))
                    z = bb.emit(sig(relax.op.add(lin(x_t, wz, wbz), lin(h, rz, rbz))))
                    rg = bb.emit(sig(relax.op.add(lin(x_t, wr, wbr), lin(h, rr, rbr))))
                    if lbr:
                        hh = relax.op.add(lin(x_t, wh, wbh),
                                          relax.op.multiply(rg, lin(h, rh, rbh)))
                    else:
                        hh = relax.op.add(lin(x_t, wh, wbh),
                                          lin(relax.op.multiply(rg, h), rh, rbh))
                    hh = bb.emit(tanh(hh))
                    one = relax.const(1.0, dtype)
                    h = bb.emit(relax.op.add(relax.op.multiply(relax.op.subtract(one, z), hh),
                                             relax.op.multiply(z, h)))
                    out[t] = h
                ys.append(bb.emit(relax.op.stack(out, axis=0)))
                hs.append(h)
            y = bb.emit(relax.op.stack(ys, axis=1))
            return relax.Tuple([y, bb.emit(relax.op.stack(hs, axis=0))])

        return convert
