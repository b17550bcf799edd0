"""Targets as data, host detection, typed config <-> CLI flags."""
import argparse

import pytest

from qcompile import config, targets
from qcompile.build import BuildConfig
from qcompile.errors import TargetError


def test_every_target_file_parses_and_builds_a_tvm_target():
    specs = targets.all_targets()
    assert {"avx512-vnni", "avx512", "avx2", "sse4.2", "intel-gpu"} <= set(specs)
    for spec in specs.values():
        t = spec.tvm_target(num_cores=2)
        assert t.kind.name == ("opencl" if spec.family == "opencl" else "llvm")
        assert spec.int8.activation_dtype == "uint8" and spec.int8.weight_dtype == "int8"


def test_host_detection_picks_the_best_runnable(monkeypatch):
    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset(
        "sse4_2 ssse3 avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni".split()))
    assert targets.detect_host().name == "avx512-vnni"
    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset("sse4_2 ssse3 avx2 fma".split()))
    assert targets.detect_host().name == "avx2"
    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset("sse4_2 ssse3".split()))
    assert targets.detect_host().name == "sse4.2"


def test_unknown_target_suggests_near_names():
    with pytest.raises(TargetError, match="Did you mean avx512-vnni"):
        targets.resolve("avx512vnni")


def test_target_the_cpu_cannot_run_needs_cross(monkeypatch):
    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset("sse4_2 ssse3 avx2 fma".split()))
    with pytest.raises(TargetError, match=r"lacks \(?avx512f.*--cross"):
        targets.resolve("avx512-vnni")
    assert targets.resolve("avx512-vnni", cross=True).name == "avx512-vnni"


def test_build_config_flags_round_trip():
    p = argparse.ArgumentParser()
    config.add_arguments(p, BuildConfig)
    args = p.parse_args(["--target", "avx2", "--input-shape", "x=1,3,8,8", "--input-shape",
                         "y=2,4", "--trials", "5", "--tuning-db", "db", "--cross"])
    cfg = config.from_args(BuildConfig, args)
    assert cfg.target == "avx2" and cfg.cross and cfg.trials == 5 and cfg.tuning_db == "db"
    assert cfg.input_shapes == {"x": (1, 3, 8, 8), "y": (2, 4)}
    assert config.from_dict(BuildConfig, config.to_dict(cfg)) == cfg
    # every field is a flag
    flags = {a.dest for a in p._actions}
    assert {f for f in BuildConfig.__dataclass_fields__} <= flags


@pytest.mark.parametrize("bad", ["x", "x=", "x=1,a", "=1,2", "x=0,3"])
def test_bad_input_shape_flag(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="input-shape"):
        config.parse_shape_assignment(bad)


def test_durations():
    assert config.parse_duration("20m") == 1200 and config.parse_duration("90") == 90
    with pytest.raises(argparse.ArgumentTypeError):
        config.parse_duration("soon")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "\n[[[broken", "not valid TOML"),
    (lambda t: t.replace('name = "avx2"', ""), "lacks the field 'name'"),
    (lambda t: t.replace('family = "x86"', 'family = "arm"'), "family = 'arm'"),
    (lambda t: t.replace("lanes = 8", 'lanes = "eight"'), "wrong type or value"),
    (lambda t: t.replace('winograd = "f2x2_3x3"', 'winograd = "f4x4_3x3"'),
     "int8.winograd = 'f4x4_3x3'"),
    (lambda t: t.replace("lanes = 8", "lanes = 0"), "must be positive"),
])
def test_malformed_target_file_is_a_target_error(tmp_path, monkeypatch, edit, message):
    import shutil

    src = targets._targets_dir()
    shutil.copytree(src / "_rules", tmp_path / "_rules")
    text = (src / "avx2.toml").read_text()
    assert edit(text) != text, "the edit must change the file"
    (tmp_path / "avx2.toml").write_text(edit(text))
    monkeypatch.setenv("QCOMPILE_TARGETS_DIR", str(tmp_path))
    targets.all_targets.cache_clear()
    try:
        with pytest.raises(TargetError, match=message) as info:
            targets.all_targets()
        assert "avx2.toml" in str(info.value)
    finally:
        monkeypatch.delenv("QCOMPILE_TARGETS_DIR")
        targets.all_targets.cache_clear()


def test_capabilities_come_from_the_target_files():
    """The generic scheduler's vector width is the target file's `cpu.vector_bits` (found by
    the exact LLVM mcpu/mattr the file gives), and each int8 dot-product kind's variants come
    from the intrinsic table, not from the kind's or the mattr's spelling."""
    import tvm

    from qcompile import targets
    from qcompile.schedules import generic
    from qcompile.schedules.x86 import intrinsics

    for name, spec in targets.all_targets().items():
        assert targets.spec_of(spec.tvm_target(2)).name == name
        if spec.family == "x86":
            assert generic.vector_bits(spec.tvm_target(2)) == spec.vector_bits
            kind = intrinsics.dot_kind(spec.int8.dot_product)
            assert kind.lanes == spec.int8.lanes
            assert intrinsics.select(spec.int8).variant in kind.variants
    hand_made = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512",
                                   "mattr": ["+avx512f"]})
    assert targets.spec_of(hand_made) is None and generic.vector_bits(hand_made) == 128
    with pytest.raises(ValueError, match="no x86 int8 intrinsic"):
        intrinsics.dot_kind("vpdpbusd.1024")
