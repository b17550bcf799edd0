"""Ignored scope: names, op types, regex patterns and subgraphs; every rule that matches
nothing is an error with near matches."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net, fq_nodes  # noqa: E402

from qcompile.errors import QuantizationError  # noqa: E402
from qcompile.quantization import IgnoredScope, Subgraph, quantize_detailed  # noqa: E402
from qcompile.quantization import cli_quantize  # noqa: E402


def _q(scope=None, **kw):
    return quantize_detailed(conv_net(), conv_data(4), ignored_scope=scope, target="avx512-vnni",
                             fast_bias_correction=False, **kw)


def _fp32_reasons(r):
    return {k: v[1] for k, v in r.plan.fp32.items() if v[1].startswith("ignored scope")}


def test_by_name():
    r = _q(IgnoredScope(names=["conv2"]))
    assert "conv2" not in r.plan.ops and "name 'conv2'" in _fp32_reasons(r)["conv2"]
    m = r.model()
    conv2 = next(n for n in m.graph.node if n.name == "conv2")
    assert list(conv2.input[:2]) == ["r1", "w2"]       # reads fp32 input and fp32 weight
    assert "w2" not in fq_nodes(m)


def test_by_type():
    r = _q(IgnoredScope(types=["Conv"]))
    assert not any(op.op_type == "Conv" for op in r.plan.ops.values())
    assert {"conv1", "conv2", "conv_sc", "conv3"} <= set(_fp32_reasons(r))
    assert "fc" in r.plan.ops


def test_by_regex_is_anchored_at_the_start():
    r = _q(IgnoredScope(patterns=["conv[12]$"]))
    assert set(_fp32_reasons(r)) == {"conv1", "conv2"}
    with pytest.raises(QuantizationError, match="pattern '1\\$'"):
        _q(IgnoredScope(patterns=["1$"]))                  # re.match: must match from the start


def test_by_subgraph():
    r = _q(IgnoredScope(subgraphs=[Subgraph(("conv2",), ("relu2",))]))
    assert set(r.report["ignored_scope"]) == {"conv2", "add", "relu2"}
    assert set(_fp32_reasons(r)) == {"conv2", "add"}    # relu2 has no rule anyway
    # a branch that does not lead from the inputs to the outputs is not included
    assert "conv_sc" in r.plan.ops


def test_from_cli_flags_and_report():
    r = _q(ignore_name=["fc"], ignore_type=["Concat"], ignore_regex=["conv_"],
           ignore_subgraph=["conv2:add"])
    got = _fp32_reasons(r)
    assert {"fc", "concat", "conv_sc", "conv2", "add"} <= set(got)
    assert r.report["ignored_scope"]["fc"] == ["name 'fc'"]


@pytest.mark.parametrize("scope,expect", [
    (IgnoredScope(names=["conv_2"]), r"name 'conv_2' .*matches no node\. Did you mean 'conv2'"),
    (IgnoredScope(types=["Gem"]), r"type 'Gem' .*op types are .*Did you mean 'Gemm'"),
    (IgnoredScope(types=["conv"]), r"Did you mean 'Conv'"),
    (IgnoredScope(patterns=["cnv.*"]), r"pattern 'cnv\.\*' .*matches no node"),
    (IgnoredScope(patterns=["("]), r"not a valid regex"),
    (IgnoredScope(subgraphs=[Subgraph(("conv9",), ("relu2",))]),
     r"subgraph node 'conv9' .*does not exist\. Did you mean"),
    (IgnoredScope(subgraphs=[Subgraph(("relu2",), ("conv1",))]), r"is empty: no path"),
])
def test_rules_matching_nothing_are_errors(scope, expect):
    with pytest.raises(QuantizationError, match=expect):
        _q(scope)


def test_all_unmatched_rules_are_listed_at_once():
    with pytest.raises(QuantizationError) as e:
        _q(IgnoredScope(names=["nope1", "conv1"], types=["Nope"]))
    msg = str(e.value)
    assert "nope1" in msg and "'Nope'" in msg and "conv1'" not in msg.split("nope1")[0]


def test_cli_flag_errors(tmp_path):
    import numpy as np
    import onnx
    onnx.save(conv_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "d.npy", conv_data(4))
    p = argparse.ArgumentParser()
    cli_quantize.add_arguments(p)
    args = p.parse_args([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npy"),
                         "--ignore-name", "conv22", "--target", "avx512-vnni"])
    with pytest.raises(QuantizationError, match="--ignore-name.*Did you mean 'conv2'"):
        cli_quantize.run(args)
    with pytest.raises(SystemExit):
        p.parse_args([str(tmp_path / "m.onnx"), "--ignore-subgraph", "conv2"])
