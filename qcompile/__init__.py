"""qcompile: a quantizing deep-learning compiler on Apache TVM.

    qcompile.load(DIR)        -> a compiled model, called with {input name: numpy array}
    qcompile.build(...)       -> compile an ONNX model into DIR/model.so + model.json
    qcompile.quantize(...)    -> post-training quantization (FakeQuantize / QDQ ONNX)
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import tvm_compat as _tvm_compat

_tvm_compat.install()
_tvm_compat.set_default_threads()


def load(build_dir, profile: bool = False):
    from .runtime import load as _load

    return _load(build_dir, profile=profile)


# The submodule qcompile.build is loaded now, so that the function below (and not the module,
# which Python would bind as `qcompile.build` on its first import) is `qcompile.build`.
from . import build as _build_module  # noqa: E402


def build(model, out_dir, quiet: bool = False, **config):
    """Python form of `qcompile build`: keyword arguments are BuildConfig fields."""
    return _build_module.build(model, _build_module.BuildConfig(**config), out_dir, quiet=quiet)


def quantize(*args, **kwargs):
    from .quantization import quantize as _quantize

    return _quantize(*args, **kwargs)
