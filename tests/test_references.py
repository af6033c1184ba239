"""The per-vendor reference bits (tests/references.py): a check that fails on another
vendor's bits, a vendor without an entry that is told so with its bits, and recording
that drops the entries a change of the numbers made stale."""

from __future__ import annotations

import json

import pytest

import references

OLD = {"data/model": "a.dir", "metrics/train.json": "b"}
NEW = {"data/model": "c.dir", "metrics/train.json": "d"}


@pytest.fixture
def golden(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "GOLDEN", tmp_path)
    monkeypatch.setattr(references, "cpu_vendor", lambda: "GenuineIntel")
    (tmp_path / "pipeline.json").write_text(json.dumps({"AuthenticAMD": NEW,
                                                        "GenuineIntel": OLD}))
    return tmp_path


def test_a_machine_is_checked_against_its_own_vendors_entry(golden, monkeypatch):
    assert references.mismatch("pipeline", OLD) == ""
    problem = references.mismatch("pipeline", NEW)
    assert "GenuineIntel" in problem and "data/model, metrics/train.json" in problem
    assert references.unrecorded("pipeline", NEW) == ""
    monkeypatch.setattr(references, "cpu_vendor", lambda: "HygonGenuine")
    assert "no reference for HygonGenuine" in references.mismatch("pipeline", OLD)
    said = references.unrecorded("pipeline", OLD)
    assert "no reference for HygonGenuine CPUs yet" in said and '"c.dir"' not in said
    assert "AuthenticAMD, GenuineIntel" in said and '"a.dir"' in said


def test_recording_new_numbers_drops_the_other_vendors_entries(golden):
    assert references.record("pipeline", OLD).endswith("GenuineIntel unchanged")
    assert set(references.references("pipeline")) == {"AuthenticAMD", "GenuineIntel"}
    said = references.record("pipeline", NEW)
    assert "dropped AuthenticAMD" in said
    assert references.references("pipeline") == {"GenuineIntel": NEW}


def test_recording_a_new_vendor_keeps_the_others(golden, monkeypatch):
    monkeypatch.setattr(references, "cpu_vendor", lambda: "HygonGenuine")
    assert "dropped" not in references.record("pipeline", NEW)
    assert set(references.references("pipeline")) == {"AuthenticAMD", "GenuineIntel",
                                                       "HygonGenuine"}
