"""Tuning OpenCL kernels on the device: MetaSchedule with qcompile's OpenCL builder and
runners (local pyopencl, and TVM RPC to a server that registered `qcompile.gpu.measure`).

Kept small for CI (a few candidates of one int8 conv on PoCL); scripts/tune_gpu_demo.py is
the full demonstration with figures.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from qcompile import targets  # noqa: E402
from qcompile.tuning.tuner import prepare_metaschedule_logging  # noqa: E402
from conftest import require_opencl  # noqa: E402

SPEC = targets.resolve("intel-gpu")


@pytest.fixture(autouse=True)
def need_device():
    require_opencl()


def conv_module(c=16, h=14, oc=32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (oc, c, 3, 3)).astype(np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, c, h, h), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), padding=1, out_dtype="int32"))
            out = bb.emit_output(relax.op.add(acc, relax.const(np.int32(7))))
        bb.emit_func_output(out)
    return bb.get(), w


def conv_task(mod):
    from tvm.s_tir import meta_schedule as ms

    from qcompile import codegen
    from qcompile.gpu import schedules as sched

    target = SPEC.tvm_target()
    fused = codegen.fuse(sched.dispatch(mod, SPEC), target)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    return fused, [t for t in tasks if "qconv2d" in t.task_name][0], target


def test_design_space_is_the_template(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from qcompile.gpu.schedules import schedule

    schedule.register_rules()
    mod, _ = conv_module()
    _, task, target = conv_task(mod)
    ctx = ms.TuneContext(mod=task.dispatched[0], target=target,
                         space_generator="post-order-apply", search_strategy="replay-trace",
                         task_name=task.task_name)
    spaces = ctx.generate_design_space()
    assert len(spaces) == 1
    trace = str(spaces[0].trace)
    assert "sample_perfect_tile" in trace and "qcompile_opencl_dot4_u8s8" in trace
    assert "sample_categorical" in trace            # unroll depth


def test_tune_with_opencl_runner_then_build_uses_the_record(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from qcompile.artifact import read_meta
    from qcompile.gpu import tuning
    from qcompile.gpu.artifact import build_relax
    from qcompile.gpu.runtime import OpenCLModel

    mod, w = conv_module()
    _, task, target = conv_task(mod)
    (tmp_path / "db").mkdir()
    db = ms.database.JSONDatabase(work_dir=str(tmp_path / "db"), module_equality="structural")
    pair = tuning.builder_and_runner(SPEC, number=2)
    ctx = ms.TuneContext(mod=task.dispatched[0], target=target,
                         space_generator="post-order-apply", search_strategy="replay-trace",
                         task_name=task.task_name, rand_state=7)
    prepare_metaschedule_logging()
    ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(tmp_path / "work"),
                  max_trials_global=6, max_trials_per_task=6, num_trials_per_iter=3,
                  database=db, cost_model="random", task_scheduler="round-robin", **pair)
    recs = db.get_all_tuning_records()
    costs = [float(np.mean([float(c) for c in r.run_secs])) for r in recs if r.run_secs]
    assert costs and all(0 < c < 10 for c in costs), costs
    # a build with this database uses the record and stays exact
    out = build_relax(mod, SPEC, tmp_path / "art", database=db)
    meta = read_meta(out)
    assert "tuning database" in meta["opencl"]["schedules"].values(), meta["opencl"]
    x = np.random.default_rng(1).integers(0, 256, (1, 16, 14, 14)).astype(np.uint8)
    got = OpenCLModel(out, meta)({"x": x})["output"]
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 32, 14, 14), np.int64)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 14, j:j + 14],
                              w[:, :, i, j].astype(np.int64))
    np.testing.assert_array_equal(got, want + 7)


def test_failed_candidates_are_reported_not_fatal():
    from tvm.s_tir import meta_schedule as ms

    from qcompile.gpu import tuning

    pair = tuning.builder_and_runner(SPEC)
    ri = ms.runner.RunnerInput("/nonexistent/candidate.json", "opencl", [])
    res = pair["runner"].run([ri])[0].result()
    assert res.run_secs is None and "OpenCLRunner" in str(res.error_msg)


def test_rpc_runner_measures_on_the_server():
    """Tracker + RPC server (with qcompile.gpu.remote.server_init) on 127.0.0.1."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker
    from tvm.s_tir import meta_schedule as ms

    from qcompile.gpu import remote, tuning

    mod, _ = conv_module(c=8, h=8, oc=8)
    _, task, target = conv_task(mod)
    from qcompile.gpu.schedules import schedule

    sch = tvm.s_tir.Schedule(task.dispatched[0])
    sch = schedule.schedule_fused(sch, max_threads=256)
    cand = tuning.candidate_json(sch.mod, target)
    tracker = Tracker(host="127.0.0.1", port=19190, port_end=19290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=19300, port_end=19400, key="qcompile-gpu-test",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True,
                        server_init_callback=remote.server_init)
    try:
        cfg = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=tracker.port,
                                  tracker_key="qcompile-gpu-test", session_timeout_sec=120)
        pair = tuning.builder_and_runner(SPEC, rpc=cfg, number=2)
        import tempfile

        d = tempfile.mkdtemp()
        path = f"{d}/candidate.json"
        with open(path, "w") as f:
            json.dump(cand, f)
        args = [ms.arg_info.TensorInfo(str(p.dtype), [int(s) for s in p.shape])
                for p in sch.mod["main"].params]
        res = pair["runner"].run([ms.runner.RunnerInput(path, "opencl", args)])[0].result()
        assert res.error_msg is None, res.error_msg
        assert len(res.run_secs) == 1 and 0 < float(res.run_secs[0]) < 10
    finally:
        server.terminate()
        tracker.terminate()
