"""ONNX `Conv` on 1-D signals (N, C, W) -> expand_dims + 2-D conv with H = 1 + squeeze.

TVM's importer emits `relax.nn.conv1d`, which the low-precision passes and the int8 conv
templates do not handle, so a quantized 1-D conv (speech front ends, silero-vad's encoder,
byte-level nets) stayed in f32. As a 2-D conv over a height of 1 it is the same arithmetic,
realized in int8 by the conv2d path (the expand_dims / squeeze are precision-preserving and
move past the dequantize). 2-D and 3-D convs go to TVM's converter unchanged.
"""
from __future__ import annotations

from ..registry import override_converter
from ._util import rank_of


@override_converter("Conv")
def conv1d_as_2d(bb, inputs, attr, opset, tvm):
    from tvm import relax

    if rank_of(inputs[0]) != 3:
        return None
    a = dict(attr)
    for key in ("kernel_shape", "strides", "dilations"):
        if key in a:
            a[key] = [1] + [int(v) for v in a[key]]
    if "pads" in a:
        b, e = (int(v) for v in a["pads"])
        a["pads"] = [0, b, 0, e]
    x = bb.emit(relax.op.expand_dims(inputs[0], 2))
    w = bb.emit(relax.op.expand_dims(inputs[1], 2))
    bias = inputs[2] if len(inputs) > 2 else None   # (TVM's converter reads inputs[2])
    return relax.op.squeeze(bb.emit(tvm([x, w, bias], a)), [2])
