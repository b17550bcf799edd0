"""ONNX `ConvTranspose` with `output_shape`: pads and output_padding derived as the ONNX spec
says, then TVM's converter (which ignores `output_shape` and so produced a smaller output:
ONNX node test test_convtranspose_output_shape).

total_padding = stride * (in - 1) + output_padding + (kernel - 1) * dilation + 1 - out;
SAME_UPPER: begin = total // 2, else begin = total - total // 2; end = total - begin. A
negative total (the output is larger than the strided kernel covers) is extra output_padding.
"""
from __future__ import annotations

from ...errors import ModelError
from ..registry import override_converter
from ._util import attr_str, node_name, rank_of


def _as_pixel_shuffle(bb, inputs, attr):
    """stride == kernel, no padding / dilation / groups (the 2x upsampling heads of DBNet,
    U-Nets): the output blocks do not overlap, so the transposed conv is a 1x1 conv to
    O*k*k channels and a depth-to-space. TVM's conv2d_transpose convolves a zero-dilated
    input instead (PP-OCRv4 det: 8.6 of 21 ms in two such layers)."""
    from tvm import relax

    x, w = inputs[0], inputs[1]
    if rank_of(x) != 4 or rank_of(w) != 4:
        return None
    n, c, h, wd = (int(d) for d in x.ty.shape)
    ci, o, kh, kw = (int(d) for d in w.ty.shape)
    strides = [int(v) for v in attr.get("strides", [1, 1])]
    if (ci != c or [kh, kw] != strides or kh < 2 or int(attr.get("group", 1)) != 1
            or any(int(v) for v in attr.get("pads", [0] * 4))
            or any(int(v) != 1 for v in attr.get("dilations", [1, 1]))
            or any(int(v) for v in attr.get("output_padding", [0, 0]))
            or attr_str(attr.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID")):
        return None
    w2 = relax.op.reshape(relax.op.permute_dims(w, [1, 2, 3, 0]), (o * kh * kw, c, 1, 1))
    y = bb.emit(relax.op.nn.conv2d(x, bb.emit(w2)))
    y = relax.op.reshape(y, (n, o, kh, kw, h, wd))
    y = relax.op.reshape(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]), (n, o, h * kh, wd * kw))
    if len(inputs) > 2 and inputs[2] is not None:
        y = relax.op.add(bb.emit(y), relax.op.reshape(inputs[2], (1, o, 1, 1)))
    return y


@override_converter("ConvTranspose")
def conv_transpose(bb, inputs, attr, opset, tvm):
    if "output_shape" not in attr:
        return _as_pixel_shuffle(bb, inputs, attr)
    a = dict(attr)
    in_shape = [int(d) for d in inputs[0].ty.shape]
    spatial = len(in_shape) - 2
    out = [int(v) for v in a.pop("output_shape")][-spatial:]
    kernel = list(a.get("kernel_shape") or [int(s) for s in inputs[1].ty.shape][2:])
    strides = list(a.get("strides", [1] * spatial))
    dil = list(a.get("dilations", [1] * spatial))
    opad = list(a.get("output_padding", [0] * spatial))
    auto = attr_str(a.pop("auto_pad", "NOTSET"))
    begin, end = [], []
    for i in range(spatial):
        total = (strides[i] * (in_shape[i + 2] - 1) + opad[i]
                 + (kernel[i] - 1) * dil[i] + 1 - out[i])
        if total < 0:
            opad[i] -= total
            total = 0
        b = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(b)
        end.append(total - b)
    if any(p >= s for p, s in zip(opad, strides)) and any(p > 0 for p in opad):
        raise ModelError(f"ConvTranspose {node_name(a)!r}: output_shape {out} needs an "
                         f"output_padding {opad} not smaller than the strides {strides}; TVM "
                         "cannot express it")
    a.update(pads=begin + end, output_padding=opad)
    return tvm(inputs, a)
