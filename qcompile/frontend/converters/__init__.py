"""qcompile's own ONNX converters; importing this package registers them."""
