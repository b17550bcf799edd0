"""The pre-tuned databases shipped in qcompile/pretuned/: each one loads cleanly, was made
for this TVM (a stale one would silently never apply), holds only valid measured records
with their provenance, and a target without one says why."""
from __future__ import annotations

import json

import pytest

from qcompile import targets
from qcompile.tuning import database as dbm, pretuned

SHIPPED = sorted(p for p in pretuned.root().iterdir() if p.is_dir() and not p.name.startswith("."))


def test_every_directory_is_a_database_or_says_why_not():
    assert SHIPPED, f"nothing in {pretuned.root()}"
    for d in SHIPPED:
        target = d.name.split(pretuned.CPU_SEP)[0]
        assert target in targets.all_targets(), f"{d} is not named after a target"
        if pretuned.CPU_SEP in d.name:   # <target>@<cpu key>: measured on that CPU
            cid = pretuned.info(d).get("cpu_id")
            assert cid and d.name == f"{target}{pretuned.CPU_SEP}{pretuned.cpu_key(cid)}", d
        assert (d / dbm.HEADER).is_file() or (d / "NOT-MEASURED.md").is_file(), d


@pytest.mark.parametrize("d", [d for d in SHIPPED if (d / dbm.HEADER).is_file()],
                         ids=lambda d: d.name)
def test_shipped_database_is_valid_and_current(d):
    spec = targets.all_targets()[d.name.split(pretuned.CPU_SEP)[0]]
    header = dbm.read_header(d)
    assert dbm.mismatch(header, spec) == {}, (
        f"{d} was made for another configuration: regenerate it with scripts/tune_pretuned.py")
    with dbm.shipped_files(d) as plain:
        wl, rec = dbm.scan_database(plain)
        assert wl.clean and rec.clean and rec.lines >= 1
        for line in (plain / dbm.RECORDS).read_text().splitlines():
            assert json.loads(line)[0] < wl.lines
    info = pretuned.info(d)
    assert info.get("cpu") and info.get("models") and info.get("versions")
    db, desc = pretuned.open_pretuned(spec, path=d)
    assert desc["used"], desc
    records = db.get_all_tuning_records()
    assert len(records) == rec.lines == wl.lines  # the best record of each kernel
    assert all(1e-9 < float(r.run_secs[0]) < 1e9 for r in records)  # measured, none failed


@pytest.mark.parametrize("d", SHIPPED, ids=lambda d: d.name)
def test_records_come_from_a_cpu_of_the_target_or_say_why_not(d):
    """A shipped database was measured where the target's code runs (its required flags
    recorded by scripts/tune_pretuned.py, or an RPC board); without one, NOT-MEASURED.md
    says why and lookup() refuses with that reason."""
    spec = targets.all_targets()[d.name.split(pretuned.CPU_SEP)[0]]
    if (d / dbm.HEADER).is_file():
        assert not (d / "NOT-MEASURED.md").exists(), f"{d}: a database and NOT-MEASURED.md"
        info = pretuned.info(d)
        if str(info.get("measured", "")).startswith("rpc"):
            return
        if "cpu_flags" in info:  # databases exported before the flags were recorded lack it
            assert set(spec.required_flags) <= set(info["cpu_flags"]), info
        return
    path, reason = pretuned.lookup(spec)
    assert path is None and "NOT-MEASURED.md" in reason
