"""A target's quantization rules (`targets/_rules/<name>.toml`), parsed and validated.

The rules are data (the analogue of NNCF's hardware config): which ONNX op types get quantized
inputs, which inputs are activations and which are weights, which ops need one scale shared by
all their quantized inputs (concat), the number of levels, and what each preset means
(symmetric / asymmetric activations). Schema (all keys checked; an unknown key is an error):

    [defaults]
    activation_levels = 256            weight_levels = 255
    activation_granularity = "per-tensor"
    weight_granularity = "per-channel"  # or "per-tensor"

    [presets.<name>]                    # e.g. performance, mixed
    activations = "symmetric" | "asymmetric"
    weights = "symmetric" | "asymmetric"
    description = "..."

    [[op]]
    type = "Conv"
    activation_inputs = [0]             # or ["*"]: every input
    weight_inputs = [1]                 # constant inputs quantized as weights; an index in both
                                        # lists is a weight when constant, else an activation
    unified_scales = false              # one range for all activation inputs (Concat)
    computed_inputs_only = false        # skip the op when an activation input is a constant
                                        # (x + bias is part of the layer, not an int8 add)
    require_quantized_consumer = false  # quantize only when the op's output (through
                                        # precision-preserving ops) is read by quantized ops
                                        # only: an int8 add before a LayerNormalization would
                                        # just add a requantize
    fp32_if_input_from = ["Softmax"]    # keep the op fp32 when an input comes (through
                                        # precision-preserving ops) from one of these op types
                                        # (attention probabilities x V, as NNCF's transformer
                                        # patterns do)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import TargetError
from .. import targets as _targets

_DEFAULT_KEYS = {"activation_levels", "weight_levels", "activation_granularity",
                 "weight_granularity"}
_PRESET_KEYS = {"activations", "weights", "description"}
_OP_KEYS = {"type", "activation_inputs", "weight_inputs", "unified_scales", "computed_inputs_only",
            "require_quantized_consumer", "fp32_if_input_from"}
_MODES = ("symmetric", "asymmetric")


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    activations: str      # "symmetric" | "asymmetric"
    weights: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class OpRule:
    type: str
    activation_inputs: tuple[int, ...] | str    # "*" = all inputs
    weight_inputs: tuple[int, ...] = ()
    unified_scales: bool = False
    computed_inputs_only: bool = False
    require_quantized_consumer: bool = False
    fp32_if_input_from: tuple[str, ...] = ()

    def activation_indices(self, n_inputs: int) -> list[int]:
        if self.activation_inputs == "*":
            return list(range(n_inputs))
        return [i for i in self.activation_inputs if i < n_inputs]


@dataclasses.dataclass(frozen=True)
class QuantRules:
    source: str
    activation_levels: int
    weight_levels: int
    activation_granularity: str
    weight_granularity: str
    presets: dict[str, Preset]
    ops: dict[str, OpRule]

    def preset(self, name: str) -> Preset:
        if name not in self.presets:
            raise TargetError(
                f"preset {name!r} (--preset) is not defined in {self.source}; "
                f"defined: {', '.join(sorted(self.presets))}")
        return self.presets[name]


def _check_keys(where: str, got: dict, allowed: set[str], source: str) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise TargetError(f"{source}: unknown key(s) {unknown} in {where}; allowed: "
                          f"{sorted(allowed)}")


def parse_rules(raw: dict[str, Any], source: str) -> QuantRules:
    """Validate the TOML data of one rules file."""
    _check_keys("the top level", raw, {"defaults", "presets", "op"}, source)
    d = raw.get("defaults", {})
    _check_keys("[defaults]", d, _DEFAULT_KEYS, source)
    presets = {}
    for name, p in raw.get("presets", {"performance": {"activations": "symmetric",
                                                       "weights": "symmetric"}}).items():
        _check_keys(f"[presets.{name}]", p, _PRESET_KEYS, source)
        for k in ("activations", "weights"):
            if p.get(k, "symmetric") not in _MODES:
                raise TargetError(f"{source}: [presets.{name}] {k} must be one of {_MODES}")
        presets[name] = Preset(name, p.get("activations", "symmetric"),
                               p.get("weights", "symmetric"), p.get("description", ""))
    ops = {}
    for i, o in enumerate(raw.get("op", [])):
        _check_keys(f"[[op]] #{i + 1}", o, _OP_KEYS, source)
        if "type" not in o:
            raise TargetError(f"{source}: [[op]] #{i + 1} has no 'type'")
        act = o.get("activation_inputs", [])
        act = "*" if act == ["*"] or act == "*" else tuple(int(x) for x in act)
        ops[o["type"]] = OpRule(o["type"], act, tuple(int(x) for x in o.get("weight_inputs", [])),
                                bool(o.get("unified_scales", False)),
                                bool(o.get("computed_inputs_only", False)),
                                bool(o.get("require_quantized_consumer", False)),
                                tuple(o.get("fp32_if_input_from", ())))
    gran = {"per-tensor", "per-channel"}
    rules = QuantRules(
        source=source,
        activation_levels=int(d.get("activation_levels", 256)),
        weight_levels=int(d.get("weight_levels", 255)),
        activation_granularity=d.get("activation_granularity", "per-tensor"),
        weight_granularity=d.get("weight_granularity", "per-channel"),
        presets=presets, ops=ops)
    if rules.activation_granularity != "per-tensor":
        raise TargetError(f"{source}: activation_granularity must be 'per-tensor' (the only "
                          "activation granularity the integer passes realize)")
    if rules.weight_granularity not in gran:
        raise TargetError(f"{source}: weight_granularity must be one of {sorted(gran)}")
    for k in ("activation_levels", "weight_levels"):
        if not 2 < getattr(rules, k) <= 256:
            raise TargetError(f"{source}: {k} must be in 3..256")
    return rules


def rules_for_target(target: str | _targets.TargetSpec) -> tuple[_targets.TargetSpec, QuantRules]:
    """Resolve `--target` (cross-compiling allowed: quantization runs no target code) and read
    the rules file the target names."""
    spec = target if isinstance(target, _targets.TargetSpec) else \
        _targets.resolve(target, cross=True)
    raw = _targets.quantization_rules(spec)
    source = str(_targets._targets_dir() / "_rules" / f"{spec.quantization_rules}.toml")
    return spec, parse_rules(raw, source)
