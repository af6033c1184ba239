"""The committed reference bits, per CPU vendor.

float32 training with the kernel paths pinned (gptmini.core.numerics) gives the same bits
on every CPU generation of one vendor, not across vendors: an Intel Xeon sums MKL's pinned
AVX2 GEMM differently from an AMD EPYC (docs/pipeline.md). So each reference file under
tests/golden/ maps a vendor ('AuthenticAMD', 'GenuineIntel') to the md5 of every output
of every stage, as a dvc.lock lists them. A change that means to change the numbers
replaces the entry of the vendor it was run on and drops from the others the outputs it
changed, which only a run on their own CPUs can restore (`record`; `python
.ci/check_reference.py --record` after a `dvc repro`); until then those outputs are
reported as not checked on that vendor, never failed.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptmini.core.numerics import cpu_vendor

GOLDEN = Path(__file__).parent / "golden"


def outs_hashes(lock: dict) -> dict[str, str]:
    """Every output of every stage in a dvc.lock, path -> md5."""
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def references(name: str) -> dict[str, dict[str, str]]:
    """tests/golden/<name>.json: vendor -> (output path -> md5)."""
    return json.loads((GOLDEN / f"{name}.json").read_text())


def compare(name: str, got: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the outputs whose md5 differs from this CPU vendor's entry in reference `name`,
    the outputs its entry does not hold). An entry may hold only some outputs: a change
    of the numbers recorded on one vendor keeps another vendor's outputs that it did not
    change (the data, the tokens) and drops the rest, which only a run on that vendor's
    CPU can record again."""
    expected = references(name).get(cpu_vendor(), {})
    differ = sorted(p for p in expected if got.get(p) != expected[p])
    unchecked = sorted(p for p in got if p not in expected)
    return differ, unchecked


def unrecorded(name: str, got: dict[str, str]) -> str:
    """'' when this CPU vendor's entry in reference `name` holds every output of `got`,
    else one paragraph naming the outputs it cannot check and what this machine made for
    them. Those outputs are reported, not failed: a vendor whose reference a change of the
    numbers dropped must still pass until a run on its CPUs records it again."""
    _, unchecked = compare(name, got)
    if not unchecked:
        return ""
    vendor, refs = cpu_vendor(), references(name)
    holders = sorted(v for v, entry in refs.items() if set(unchecked) <= set(entry))
    return (f"tests/golden/{name}.json holds no reference for {vendor} CPUs yet for "
            f"{', '.join(unchecked)} (recorded on {', '.join(holders) or 'no vendor'}); "
            f"this machine made:\n"
            f"{json.dumps({p: got[p] for p in unchecked}, indent=2)}")


def mismatch(name: str, got: dict[str, str]) -> str:
    """'' when every output this CPU vendor's entry in reference `name` holds has the md5
    it records (`unrecorded` names the outputs it does not hold), else one paragraph
    saying which differ and what this machine made."""
    differ, _ = compare(name, got)
    if not differ:
        return ""
    return (f"on this {cpu_vendor()} CPU the outputs differ from tests/golden/{name}.json "
            f"in {', '.join(differ)}; this machine made:\n{json.dumps(got, indent=2)}")


def record(name: str, got: dict[str, str]) -> str:
    """Make `got` this CPU vendor's reference `name`. The outputs whose md5 it changes on
    this vendor changed their numbers: the other vendors' entries lose them (made from the
    old numbers; a run on their CPUs records them again) and keep the rest. Returns what
    it did."""
    vendor, refs = cpu_vendor(), references(name)
    previous = refs.get(vendor, {})
    changed = {p for p in got if p in previous and previous[p] != got[p]}
    dropped = []
    for other in sorted(v for v in refs if v != vendor):
        kept = {p: md5 for p, md5 in refs[other].items() if p not in changed}
        if kept != refs[other]:
            dropped.append(f"{other}'s {', '.join(sorted(set(refs[other]) - set(kept)))}")
        refs[other] = kept
    refs = {v: entry for v, entry in refs.items() if entry}
    refs[vendor] = got
    (GOLDEN / f"{name}.json").write_text(json.dumps(dict(sorted(refs.items())), indent=2)
                                         + "\n")
    what = "unchanged" if previous == got else "recorded"
    return (f"tests/golden/{name}.json: {vendor} {what}"
            + (f"; dropped {'; '.join(dropped)} (made from the old numbers)" if dropped else ""))
