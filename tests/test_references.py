"""The per-vendor reference bits (tests/references.py): a check that fails on another
vendor's bits, outputs a vendor's entry lacks reported with their bits and never failed,
and recording that drops from the other vendors only the outputs whose numbers changed."""

from __future__ import annotations

import json

import pytest

import references

DATA = {"data/tokens": "t.dir"}
OLD = {**DATA, "data/model": "a.dir", "metrics/train.json": "b"}
NEW = {**DATA, "data/model": "c.dir", "metrics/train.json": "d"}


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
    assert references.mismatch("pipeline", OLD) == ""
    said = references.unrecorded("pipeline", OLD)
    assert "no reference for HygonGenuine CPUs yet" in said and '"c.dir"' not in said
    assert "AuthenticAMD, GenuineIntel" in said and '"a.dir"' in said


def test_a_partial_entry_checks_what_it_holds_and_names_the_rest(golden):
    (golden / "pipeline.json").write_text(json.dumps({"GenuineIntel": DATA}))
    assert references.compare("pipeline", NEW) == ([], ["data/model", "metrics/train.json"])
    assert references.mismatch("pipeline", NEW) == ""
    said = references.unrecorded("pipeline", NEW)
    assert "data/model, metrics/train.json" in said and '"t.dir"' not in said
    assert "data/tokens" in references.mismatch("pipeline", {**NEW, "data/tokens": "x.dir"})


def test_recording_new_numbers_drops_only_the_changed_outputs_elsewhere(golden):
    assert references.record("pipeline", OLD).endswith("GenuineIntel unchanged")
    assert references.references("pipeline") == {"AuthenticAMD": NEW, "GenuineIntel": OLD}
    said = references.record("pipeline", NEW)
    assert "dropped AuthenticAMD's data/model, metrics/train.json" in said
    assert references.references("pipeline") == {"AuthenticAMD": DATA, "GenuineIntel": NEW}


def test_an_entry_left_empty_is_removed(golden):
    (golden / "pipeline.json").write_text(json.dumps({"AuthenticAMD": {"data/model": "a.dir"},
                                                      "GenuineIntel": OLD}))
    references.record("pipeline", NEW)
    assert references.references("pipeline") == {"GenuineIntel": NEW}


def test_recording_a_new_vendor_keeps_the_others(golden, monkeypatch):
    monkeypatch.setattr(references, "cpu_vendor", lambda: "HygonGenuine")
    assert "dropped" not in references.record("pipeline", NEW)
    assert set(references.references("pipeline")) == {"AuthenticAMD", "GenuineIntel",
                                                      "HygonGenuine"}
