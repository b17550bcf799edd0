"""Tuning with MetaSchedule into a database: reuse, and refusal of mismatched/corrupt DBs."""
import json
import re

import pytest

from qcompile.build import BuildConfig, build
from qcompile.errors import TuningDatabaseError
from qcompile.tuning import database as dbm


def test_tune_then_reuse_without_tuning(mlp_path, tmp_path):
    db = tmp_path / "db"
    first = build(str(mlp_path), BuildConfig(trials=6, tuning_db=str(db), seed=0),
                  tmp_path / "b1", quiet=True)
    t1 = first.meta["tuning"]
    assert t1["tasks"] >= 2 and t1["tuned_now"] == t1["tasks"] and t1["trials"] > 0
    header = json.loads((db / dbm.HEADER).read_text())
    assert header["target"] == first.meta["target"]["name"] and header["tvm"] == "0.27.0.post1"
    assert (db / dbm.RECORDS).stat().st_size > 0
    second = build(str(mlp_path), BuildConfig(trials=6, tuning_db=str(db)), tmp_path / "b2",
                   quiet=True)
    t2 = second.meta["tuning"]
    assert t2["tuned_now"] == 0 and t2["already_tuned"] == t1["tasks"] and t2["trials"] == 0


def test_database_for_another_target_is_refused(mlp_path, tmp_path, other_x86_target):
    db = tmp_path / "db"
    db.mkdir()
    other = other_x86_target.name
    (db / dbm.HEADER).write_text(json.dumps({"qcompile_db_version": 1, "target": other,
                                             "mcpu": other_x86_target.mcpu, "mattr": [],
                                             "family": "x86", "tvm": "0.27.0.post1"}))
    (db / dbm.RECORDS).write_text("")
    before = (db / dbm.HEADER).read_text()
    with pytest.raises(TuningDatabaseError, match=f"made for another configuration.*{re.escape(other)}"):
        build(str(mlp_path), BuildConfig(tuning_db=str(db)), tmp_path / "b", quiet=True)
    assert (db / dbm.HEADER).read_text() == before


def test_database_from_another_tvm_is_refused(mlp_path, tmp_path):
    from qcompile import targets

    db = tmp_path / "db"
    db.mkdir()
    ident = dbm.identity(targets.resolve("host"))
    ident["tvm"] = "0.19.0"
    (db / dbm.HEADER).write_text(json.dumps(ident))
    with pytest.raises(TuningDatabaseError, match="tvm: database '0.19.0'"):
        build(str(mlp_path), BuildConfig(tuning_db=str(db)), tmp_path / "b", quiet=True)


def test_corrupt_or_foreign_database(mlp_path, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / dbm.HEADER).write_text("{not json")
    with pytest.raises(TuningDatabaseError, match="corrupt"):
        build(str(mlp_path), BuildConfig(tuning_db=str(db)), tmp_path / "b", quiet=True)
    other = tmp_path / "raw"
    other.mkdir()
    (other / dbm.RECORDS).write_text("")
    with pytest.raises(TuningDatabaseError, match="no qcompile-tuning.json"):
        build(str(mlp_path), BuildConfig(tuning_db=str(other)), tmp_path / "b", quiet=True)


def test_records_transfer_between_calibrations(cnn_model, tmp_path):
    """Two calibrations of one model (different zero points, multipliers, clip bounds) have
    the same int8 tuning workloads: the scalars are kernel inputs, not immediates."""
    import numpy as np
    import onnx

    from qcompile import targets
    from qcompile.quantization.api import quantize
    from qcompile.tuning.workloads import int8_workload_hashes

    fp32 = tmp_path / "fp32.onnx"
    onnx.save(cnn_model, fp32)
    shape = [d.dim_value for d in cnn_model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(5)
    a = quantize(str(fp32), rng.standard_normal([8] + shape).astype(np.float32))
    b = quantize(str(fp32), (3 * rng.random([8] + shape) + 1).astype(np.float32))
    spec = targets.detect_host()
    ha, hb = int8_workload_hashes(a, spec), int8_workload_hashes(b, spec)
    assert len(ha) >= 2 and sorted(ha) == sorted(hb)
