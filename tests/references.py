"""The committed reference bits, per CPU vendor.

float32 training with the kernel paths pinned (gptmini.core.numerics) gives the same bits
on every CPU generation of one vendor, not across vendors: an Intel Xeon sums MKL's pinned
AVX2 GEMM differently from an AMD EPYC (docs/pipeline.md). So each reference file under
tests/golden/ maps a vendor ('AuthenticAMD', 'GenuineIntel') to the md5 of every output
of every stage, as a dvc.lock lists them. A change that means to change the numbers
replaces the entry of the vendor it was run on and deletes the others, which only a run
on their own CPUs can restore (`record`; `python .ci/check_reference.py --record` after
a `dvc repro`).
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


def unrecorded(name: str, got: dict[str, str]) -> str:
    """'' when this CPU's vendor has an entry in reference `name`, else one paragraph
    saying it has none yet and what this machine made. A change of the numbers recorded on
    one vendor's CPU leaves the others without one until a run on their CPUs records it:
    the check says so and cannot check their bits, rather than fail every run there."""
    vendor, refs = cpu_vendor(), references(name)
    if vendor in refs:
        return ""
    return (f"tests/golden/{name}.json holds no reference for {vendor} CPUs yet (recorded "
            f"on {', '.join(sorted(refs)) or 'no vendor'}); this machine made:\n"
            f"{json.dumps(got, indent=2)}")


def mismatch(name: str, got: dict[str, str]) -> str:
    """'' when `got` equals this CPU vendor's reference `name`, else one paragraph saying
    what differs (or that the vendor has no reference: `unrecorded`) and what this machine
    made."""
    vendor = cpu_vendor()
    expected = references(name).get(vendor)
    if expected is None:
        return unrecorded(name, got)
    if got == expected:
        return ""
    differ = sorted(p for p in {*got, *expected} if got.get(p) != expected.get(p))
    return (f"on this {vendor} CPU the outputs differ from tests/golden/{name}.json in "
            f"{', '.join(differ)}; this machine made:\n{json.dumps(got, indent=2)}")


def record(name: str, got: dict[str, str]) -> str:
    """Make `got` this CPU vendor's reference `name`. When it replaces a different entry
    of this vendor the numbers changed, and the other vendors' entries, made from the old
    numbers, are dropped (a run on their CPUs records them again). Returns what it did."""
    vendor, refs = cpu_vendor(), references(name)
    previous = refs.get(vendor)
    dropped = sorted(v for v in refs if v != vendor) if previous not in (None, got) else []
    refs = {v: entry for v, entry in refs.items() if v not in dropped}
    refs[vendor] = got
    (GOLDEN / f"{name}.json").write_text(json.dumps(dict(sorted(refs.items())), indent=2)
                                         + "\n")
    what = "unchanged" if previous == got else "recorded"
    return (f"tests/golden/{name}.json: {vendor} {what}"
            + (f"; dropped {', '.join(dropped)} (made from the old numbers)" if dropped else ""))
