"""Post-training quantization: fp32 ONNX + calibration data -> ONNX with FakeQuantize (or QDQ).

Public API (re-exported by `qcompile`): `quantize`, `IgnoredScope`, `Subgraph`,
`QuantizeConfig`, `DatasetConfig`, `read_report`, `summary`, `debug_compare`. The CLI
subcommands are `cli_quantize` (`qcompile quantize`) and `cli_debug` (`qcompile debug`).
See docs/quantization.md.
"""
from .api import QuantizationResult, quantize, quantize_detailed, save
from .config import QuantizeConfig
from .datasets import Dataset, DatasetConfig
from .ignored_scope import IgnoredScope, Subgraph
from .report import read_report, summary

__all__ = ["quantize", "quantize_detailed", "QuantizationResult", "save", "QuantizeConfig",
           "DatasetConfig", "Dataset", "IgnoredScope",
           "Subgraph", "read_report", "summary", "debug_compare"]


def debug_compare(*args, **kwargs):
    """See `qcompile.quantization.debug.compare`."""
    from .debug import compare
    return compare(*args, **kwargs)
