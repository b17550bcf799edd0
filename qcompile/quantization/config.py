"""`QuantizeConfig`: every setting of `qcompile quantize`, one CLI flag per field."""
from __future__ import annotations

import argparse
import dataclasses

from ..config import flag, parse_shape_assignment, parse_value_assignment
from .range_estimators import ESTIMATORS


def _subgraph(text: str) -> str:
    if text.count(":") != 1:
        raise argparse.ArgumentTypeError(
            f"--ignore-subgraph expects IN_NODE[,IN_NODE...]:OUT_NODE[,...], got {text!r}")
    return text


@dataclasses.dataclass
class QuantizeConfig:
    preset: str = flag("performance", choices=["performance", "mixed"],
                       help="performance: symmetric activations (u8 after ReLU-like ops, else "
                            "s8); mixed: asymmetric activations. Weights: per-channel symmetric "
                            "s8 in both (default: performance)")
    target: str = flag("host", help="target whose quantization rules decide which ops get "
                                    "quantized inputs (targets/*.toml; default: host)")
    input_shapes: dict[str, tuple[int, ...]] = flag(
        default_factory=dict, name="--input-shape", parse=parse_shape_assignment, repeat=True,
        metavar="NAME=D1,D2,...", help="static shape for an input with symbolic dims "
        "(repeatable; as for `qcompile build`): the quantized model keeps it, and every "
        "calibration sample must have it")
    input_values: dict[str, tuple[float, ...]] = flag(
        default_factory=dict, name="--input-value", parse=parse_value_assignment, repeat=True,
        metavar="NAME=V[,V...]", help="freeze an input to a constant (repeatable; as for "
        "`qcompile build`): the quantized model has it as an initializer, an If whose "
        "condition depends only on it is replaced by its taken branch (whose ops then get "
        "quantized), and calibration samples need no array for it")
    subset_size: int = flag(300, help="number of calibration samples used (default: 300)")
    activation_stat: str = flag("mse", choices=list(ESTIMATORS),
                                help="activation range estimator: minmax, mean_minmax (mean of "
                                     "per-batch min/max, NNCF's default), percentile, mse "
                                     "(error-optimal clipping, default) or kl (entropy)")
    weight_stat: str = flag("minmax", choices=["minmax", "mse"],
                            help="per-channel weight range: minmax (abs max, default) or mse")
    percentile: float = flag(99.99, help="percentile for --activation-stat percentile")
    histogram_bins: int = flag(2048, help="histogram bins for percentile/mse/kl")
    histogram_sample: int = flag(16384, help="values per tensor and sample the percentile/mse/"
                                 "kl histogram takes, evenly strided (0: every value); min, "
                                 "max and the range grow see every value")
    overflow_fix: str = flag("auto", choices=["auto", "none", "first-layer", "all"],
                             help="use half the weight range (7-bit weights, |q| <= 64) in the "
                                  "first / all weighted layers. auto (default): what the "
                                  "target's data says (targets/*.toml ptq_overflow_fix): 'all' "
                                  "on avx2/avx512/sse4.2, whose kernels then use the faster "
                                  "saturating vpmaddubsw pair exactly; 'none' with VNNI. "
                                  "first-layer is NNCF's default, for runtimes that saturate "
                                  "(OpenVINO on AVX2)")
    fast_bias_correction: bool = flag(True, help="shift biases of Conv/Gemm/MatMul layers to "
                                                 "undo the mean error quantization adds")
    bias_correction_subset_size: int = flag(
        100, help="calibration samples (evenly spread) the bias correction averages over; "
                  "0: all of them (default: 100, NNCF's FastBiasCorrection subset)")
    fold_batchnorm: bool = flag(True, help="fold BatchNormalization into the Conv before it")
    ignore_name: list[str] = flag(default_factory=list, repeat=True, metavar="NODE",
                                  help="keep this node in fp32 (repeatable)")
    ignore_type: list[str] = flag(default_factory=list, repeat=True, metavar="OP_TYPE",
                                  help="keep every node of this op type in fp32 (repeatable)")
    ignore_regex: list[str] = flag(default_factory=list, repeat=True, metavar="REGEX",
                                   help="keep nodes whose name matches (re.match) in fp32")
    ignore_subgraph: list[str] = flag(default_factory=list, repeat=True, parse=_subgraph,
                                      metavar="IN,..:OUT,..",
                                      help="keep every node on a path from IN nodes to OUT "
                                           "nodes in fp32 (repeatable)")
    format: str = flag("fq", choices=["fq", "qdq"],
                       help="fq: OpenVINO FakeQuantize (for qcompile build / OpenVINO); qdq: "
                            "QuantizeLinear/DequantizeLinear (ONNX Runtime)")
    metric: str | None = flag(None, metavar="MODULE:FUNCTION",
                              help="accuracy-aware mode: FUNCTION(predict, samples) -> float, "
                                   "higher is better; reverts the most sensitive layers to fp32 "
                                   "until the drop is at most --max-drop")
    max_drop: float = flag(0.01, help="accuracy-aware: allowed metric drop (default 0.01)")
    drop_type: str = flag("absolute", choices=["absolute", "relative"],
                          help="accuracy-aware: drop as a difference or a fraction of fp32")
    max_reverts: int = flag(-1, help="accuracy-aware: most layers reverted (-1: no limit)")
    ranking_subset_size: int = flag(32, help="accuracy-aware: samples used to rank layers")
    validation_size: int = flag(0, help="accuracy-aware: validation samples (0: all of "
                                        "--val-data, or the calibration subset)")
    val_data: str | None = flag(None, metavar="DATA",
                                help="accuracy-aware: validation data (default: --data)")
    batch_size: int = flag(1, help="samples per inference when the model's batch is dynamic")
    threads: int = flag(0, help="ONNX Runtime threads (0: all cores)")
    progress: bool | None = flag(None, help="show progress bars (default: when stderr is a tty)")
