"""CI: did `dvc repro` on this machine make the committed reference bits? The workspace's
dvc.lock must record the committed dvc.lock's inputs (every stage's code, data and params)
and, for every output, the md5 that tests/golden/pipeline.json holds for this CPU's vendor
(the bits are the same on every CPU generation of a vendor, not across vendors:
tests/references.py). Exit 1, saying what differs, otherwise. The outputs a vendor's
entry does not hold yet (their numbers changed on another vendor's CPU) are reported,
with the bits this machine made, and not checked.

    python .ci/check_reference.py            # check
    python .ci/check_reference.py --record   # make this run its vendor's reference
"""

import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from references import mismatch, outs_hashes, record, unrecorded  # noqa: E402


def inputs(lock: dict) -> dict:
    """What a dvc.lock's pipeline was computed from: each stage's command, params and
    dependencies, less its outputs and the other stages' outputs it reads (which are the
    vendor's bits, checked below)."""
    made = set(outs_hashes(lock))
    return {name: {key: [dep for dep in value if dep["path"] not in made] if key == "deps"
                   else value for key, value in stage.items() if key != "outs"}
            for name, stage in lock["stages"].items()}


kernels = yaml.safe_load(Path("params.yaml").read_text())["train"].get("kernels", "pinned")
if kernels != "pinned":  # native kernels sum in the CPU generation's own order
    sys.exit(f"CI: params.yaml has train.kernels: {kernels}: the reference bits are made on "
             "the pinned kernel paths only (train.kernels: pinned); nothing checked or recorded")
made = yaml.safe_load(Path("dvc.lock").read_text())
if sys.argv[1:] == ["--record"]:
    print(record("pipeline", outs_hashes(made)))
    sys.exit(0)
committed = yaml.safe_load(subprocess.run(["git", "show", "HEAD:dvc.lock"], check=True,
                                          capture_output=True, text=True).stdout)
if inputs(made) != inputs(committed):
    sys.exit("CI: dvc repro ran on other inputs than the committed dvc.lock records "
             "(a code, data or params change not committed with its dvc.lock)")
problem = mismatch("pipeline", outs_hashes(made))
if problem:
    sys.exit(f"CI: dvc repro did not reproduce the committed reference: {problem}")
missing = unrecorded("pipeline", outs_hashes(made))
if missing:  # the inputs are checked above; these bits have nothing to be checked against
    print(f"CI: NOT CHECKED: {missing}")
    sys.exit(0)
print("CI: dvc repro made the committed reference bits for this CPU's vendor")
