"""CI: the export loads and generates in a fresh process with torch alone (run it with
`python -I`, so nothing of this project is importable): model.ts through its own
KV-cache `generate`, model.pt2 through its forward pass in a greedy loop. Exit 1 on failure.

    python -I .ci/check_export.py data/export
"""

import json
import sys
from pathlib import Path

import torch

directory = Path(sys.argv[1])
assert "gptmini" not in sys.modules
tok = json.loads((directory / "tokenizer.json").read_text())
vocab_size = tok["vocab_size"] if "vocab_size" in tok else len(tok["vocab"])
if tok["kind"] == "char":
    stoi = {ch: i for i, ch in enumerate(tok["vocab"])}
    prompt = [stoi[c] for c in "ROMEO:" if c in stoi] or [0]
else:
    import tiktoken

    prompt = tiktoken.get_encoding(tok["encoding"]).encode_ordinary("ROMEO:")
ids = torch.tensor([prompt])
context = json.loads((directory / "evaluation_metrics.json").read_text())["model"]["config"][
    "block_size"]
failures = []

scripted = torch.jit.load(str(directory / "model.ts"), map_location="cpu").eval()
out = scripted.generate(ids, 40, 0.8, 0, 0.95, 1337)
new = out[0, len(prompt):] if out.size(1) > 40 else out[0]
if new.numel() != 40 or not ((new >= 0) & (new < vocab_size)).all():
    failures.append(f"model.ts generate gave {out.tolist()}")

program = torch.export.load(str(directory / "model.pt2")).module()
seq = ids
with torch.no_grad():
    for _ in range(20):
        logits = program(seq[:, -context:])
        if not torch.isfinite(logits[0, -1]).all():
            failures.append("model.pt2 gave non-finite logits")
            break
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
if seq.size(1) != len(prompt) + 20:
    failures.append(f"model.pt2 generated {seq.size(1) - len(prompt)} of 20 tokens")

for failure in failures:
    print(f"CI: {failure}", file=sys.stderr)
if failures:
    sys.exit(1)
print(f"export: model.ts and model.pt2 load and generate in a fresh process "
      f"({len(prompt)}-token prompt, 40 and 20 new tokens)")
