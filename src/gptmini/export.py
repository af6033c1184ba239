"""The export: a TorchScript model, the tokenizer definition and the evaluation metrics,
in one directory that torch alone can use, without this project's code."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from gptmini.atomic import atomic_dir
from gptmini.checkpoint import load_checkpoint, model_from_checkpoint, weights_sha256

MODEL_FILE = "model.ts"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "evaluation_metrics.json"

USAGE = """\
# GPT-Mini export

Needs only `torch` (and `tiktoken` for a BPE tokenizer).

```python
import json, torch
model = torch.jit.load("model.ts")            # forward(ids: LongTensor[B, T]) -> logits[B, T, V]
tok = json.load(open("tokenizer.json"))
if tok["kind"] == "char":
    stoi = {ch: i for i, ch in enumerate(tok["vocab"])}
    encode = lambda s: [stoi[c] for c in s]
    decode = lambda ids: "".join(tok["vocab"][i] for i in ids)
else:
    import tiktoken
    enc = tiktoken.get_encoding(tok["encoding"])
    encode, decode = enc.encode_ordinary, enc.decode
ids = torch.tensor([encode("ROMEO:")])
next_id = model(ids)[0, -1].argmax().item()
print(decode([next_id]))
```

`evaluation_metrics.json` holds the validation metrics, the model's configuration and
the tokenizer's identity. The context is `model.block_size` tokens.
"""


def evaluation_record(ckpt: dict[str, Any], metrics: dict[str, Any],
                      weights_sha256: str, n_params: int) -> dict[str, Any]:
    tokenizer = {k: v for k, v in ckpt["tokenizer"].items() if k != "vocab"}
    return {
        "metrics": metrics,
        "model": {"name": "GPT-Mini", "config": ckpt["model_config"], "parameters": n_params,
                  "step": ckpt["step"], "weights_sha256": weights_sha256},
        "tokenizer": tokenizer,
    }


def export(checkpoint: str | Path, metrics_json: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write model.ts, tokenizer.json, evaluation_metrics.json and README.md to `out_dir`."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    record = evaluation_record(ckpt, json.loads(Path(metrics_json).read_text()),
                               weights_sha256(model), model.num_parameters())
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the one
        # format that carries methods (e.g. generation) and loads with torch alone.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    with atomic_dir(out_dir) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp / MODEL_FILE))
        (tmp / TOKENIZER_FILE).write_text(json.dumps(ckpt["tokenizer"], indent=2) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(USAGE)
    return record
