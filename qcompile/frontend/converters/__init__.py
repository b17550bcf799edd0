"""qcompile's own ONNX converters; importing this package registers them.

* `fake_quantize`: OpenVINO `FakeQuantize` (domain org.openvinotoolkit, or the bare name)
  -> `qcompile.fake_quantize`, ranges validated at import (QuantizationError naming the node).
* `qdq`: `QuantizeLinear` / `DequantizeLinear` (per-tensor and per-axis, u8/s8), replacing
  TVM's: normalized axis, scalar per-tensor parameters.
* `qoperator`: `QLinearConv`, `QLinearMatMul`, `QLinearAdd`, `QLinearGlobalAveragePool`
  (rewritten to dequantize -> float op -> quantize, which the low-precision passes realize),
  `ConvInteger`, `MatMulInteger` (exact integer ops).
* `checked`: IsInf, SpaceToDepth(CRD) done right; run-time Expand shapes and training-mode
  Dropout / BatchNormalization refused (TVM's converters ignored what they did not support).
* `clip`: `Clip` with constant bounds -> `R.clip` (TVM's converter emits opaque TE
  `maximum`/`minimum` calls that the passes could not see through).
* `conv1d`: 1-D `Conv` as a 2-D conv of height 1 (so it is realized in int8 like others).
* `conv_transpose`: `ConvTranspose` with `output_shape` (TVM's converter ignores it).
* `rnn`: `LSTM`, `GRU` (TVM's importer has neither), unrolled over the static sequence.
* `rebind`: every other TVM converter that binds its result itself (LayerNormalization, ...)
  returns the call instead, so the result is named after the node like all others.
"""
from . import checked, clip, conv1d, conv_transpose, fake_quantize, qdq, qoperator, rnn  # noqa: F401
from . import rebind

rebind.register_all()   # last: wraps only the converters not replaced above
