"""The text tables (`qcompile inspect`, `bench -report_type average_counters`, the tuning
summary) drawn by rich, and the tuning progress: plain lines off a terminal, a rich bar on
one."""
from __future__ import annotations

import io
import os
import select
from types import SimpleNamespace as NS

import pytest

from qcompile import bench, report
from qcompile.tuning.progress import TaskInfo, format_summary, interactive, make_progress_callback

META = {"ops": [
    {"node": "conv1", "op": "Conv", "precision": "int8", "in_dtypes": ["u8", "s8"],
     "out_dtype": "s32"},
    {"node": "relu1", "op": "Relu", "precision": "fused", "in_dtypes": [], "out_dtype": None,
     "reason": "fused into conv1"},
    {"node": "n" * 60, "op": "Softmax", "precision": "f32", "in_dtypes": ["f32"],
     "out_dtype": "f32", "reason": "no integer realization [bold]" + " x" * 80},
], "precision_summary": "1 of 2 compute ops in INT8; f32: [Softmax 'prob']",
    "kernels": [{"function": "fused_conv2d_add_relu", "precision": "int8",
                 "nodes": ["conv1", "relu1"]}]}


def _plain(text: str) -> list[str]:
    lines = text.split("\n")
    assert text.isascii() and "\x1b" not in text           # no colors, ASCII rule
    assert all(line == line.rstrip() for line in lines)    # no trailing spaces
    return lines


def test_format_table():
    lines = _plain(report.format_table(META))
    assert lines[0].split() == ["node", "op", "precision", "in", "out", "reason"]
    assert set(lines[1]) == {"-"}
    assert lines[2].split() == ["conv1", "Conv", "int8", "u8,s8", "s32"]
    assert lines[3].split() == ["relu1", "Relu", "fused", "-", "-", "fused", "into", "conv1"]
    # a long row stays one line (no wrapping when piped), cells are literal (no markup)
    assert lines[4].startswith("n" * 48 + "  Softmax") and "[bold] x x" in lines[4]
    assert lines[-1] == META["precision_summary"] and len(lines) == 6
    # the columns line up under their headers
    assert lines[2].index("Conv") == lines[0].index("op")
    assert lines[2].index("u8,s8") == lines[0].index("in ")


def test_bench_counters():
    class Model:
        def profile(self, feed):
            return [("fused_conv2d_add_relu", 1.5e-4), ("fused_conv2d_add_relu", 1.7e-4),
                    ("vm.builtin.alloc_storage", 2e-5)]

    lines = _plain(bench.counters(Model(), None, META))
    assert lines[0].split() == ["layer", "(kernel)", "calls", "time", "us", "%", "precision",
                                "nodes"]
    assert lines[2].split() == ["fused_conv2d_add_relu", "2", "320.0", "94.12", "int8",
                                "conv1,", "relu1"]
    assert lines[3].split() == ["vm.builtin.alloc_storage", "1", "20.0", "5.88", "-"]
    assert lines[-1] == "Total: 0.340 ms in 3 calls"
    # numbers are right-aligned under their headers
    assert lines[2].index("320.0") + 5 == lines[0].index("time us") + 7


def test_format_summary():
    rows = [{"task": "fused_conv2d_add_relu", "weight": 2.0, "trials": 32, "total_trials": 64,
             "best_ms": 0.0123, "status": "done"},
            {"task": "t" * 50, "weight": 1.0, "trials": 0, "total_trials": 0, "best_ms": None,
             "status": "3 left"}]
    lines = _plain(format_summary(rows, 83.2, "trial budget reached", {"h2": 12, "h1": 20}))
    assert lines[0].split() == ["#", "task", "weight", "trials", "total", "best", "weighted",
                                "status"]
    assert lines[2].split() == ["1", "fused_conv2d_add_relu", "2", "32", "64", "12.30", "us",
                                "24.60", "us", "done"]
    assert lines[3].split() == ["2", "t" * 37 + "...", "1", "0", "0", "-", "-", "3", "left"]
    assert lines[4] == ("32 trials in 1m23s (trial budget reached); sum of tuned kernel "
                        "latencies x weight: 24.60 us (tasks without a valid record not "
                        "included)")
    assert lines[5] == "measured on: h1: 20, h2: 12"


TASKS = [TaskInfo("fused_conv2d_add_relu", 1, 4), TaskInfo("softmax", 1, 2)]
OK = NS(error_msg=None, run_secs=[1.2e-5])


def _batches(prog):
    built = NS(error_msg=None)
    prog._inst.apply(None, 0, None, [built] * 4, [OK] * 4)
    prog._inst.apply(None, 1, None, [built] * 2, [OK, NS(error_msg="x", run_secs=None)])


def test_progress_lines_off_a_terminal():
    buf = io.StringIO()
    _batches(make_progress_callback(TASKS, stream=buf))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in buf.getvalue()
    assert lines[0].startswith("[tune 4/6 trials | ")
    assert lines[0].endswith("] task 1/2 fused_conv2d_add_relu: 4 done, 0 left, best 12.00 us")
    assert lines[1].endswith("] task 2/2 softmax: 2 done, 0 left, 1 failed, best 12.00 us")
    quiet = io.StringIO()
    _batches(make_progress_callback(TASKS, stream=quiet, quiet=True))
    assert quiet.getvalue() == ""


def test_interactive_terminals_only(monkeypatch):
    assert not interactive(io.StringIO())
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setenv("TERM", "xterm")
        monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
        assert interactive(tty)
        monkeypatch.setenv("TTY_INTERACTIVE", "0")   # what CI with a fake TTY can set
        assert not interactive(tty)
        monkeypatch.setenv("TTY_INTERACTIVE", "1")
        monkeypatch.setenv("TERM", "dumb")
        assert interactive(tty)                      # TTY_INTERACTIVE wins, as in rich
    os.close(master)


@pytest.mark.parametrize("finish", ["all trials", "close", "garbage collected"])
def test_progress_bar_on_a_terminal(monkeypatch, finish):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    master, slave = os.openpty()
    out = b""
    with os.fdopen(slave, "w") as tty:
        tasks = TASKS if finish == "all trials" else TASKS + [TaskInfo("more", 1, 8)]
        prog = make_progress_callback(tasks, stream=tty)
        assert prog.bar is not None and not prog.bar.live.is_started  # drawn from batch 1
        _batches(prog)
        if finish == "close":
            prog.close()
            prog.close()
        elif finish == "garbage collected":
            bar = prog.bar
            del prog
            assert not bar.live.is_started
        if finish != "garbage collected":
            assert prog.bar is None
        while select.select([master], [], [], 0.2)[0]:
            out += os.read(master, 65536)
    os.close(master)
    text = out.decode()
    total = sum(t.budget for t in tasks)
    assert f"6/{total}" in text and "tune" in text and "\r" in text
    assert "task 2/" in text.split("\r\x1b[2K")[-1]   # the last batch's line, redrawn in place
    assert text.endswith("\r\n\x1b[?25h")  # stopped: the cursor is back, on a new line
