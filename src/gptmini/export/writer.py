"""Writing the export: a TorchScript model (forward and KV-cache `generate`), torch.export
programs of the forward pass and the generation steps, the ONNX step graph, the tokenizer
definition, the evaluation metrics, the training logs and a Hugging Face folder, in one
directory that torch alone can use, without this project's code (file names:
gptmini.export.layout).

`gptmini.inference.loading.load_export` reads it back. The pipeline's export stage is
`gptmini.export.stage.export_stage`: this export, then the MLflow Model made of it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from gptmini.core.atomic import atomic_dir
from gptmini.core.hashing import weights_sha256
from gptmini.export.layout import (
    DECODE_FILE,
    EVAL_LOG_FILE,
    HF_DIR,
    METRICS_FILE,
    MODEL_FILE,
    PREFILL_FILE,
    PROGRAM_FILE,
    README_FILE,
    TOKENIZER_FILE,
    TRAIN_LOG_FILE,
)
from gptmini.export.programs import example_prompt, export_program, step_programs
from gptmini.model import GPT
from gptmini.report import describe_model, metrics_line, metrics_markdown
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint

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
# Sampling with a key/value cache: ids, max_new_tokens, temperature (0: greedy),
# top_k (0: off), top_p (1.0: off), seed (-1: random)
new_ids = model.generate(ids, 200, 0.8, 0, 0.95, 1337)
print(decode(new_ids[0].tolist()))
```

`model.pt2` is the forward pass as a `torch.export` program, batch and sequence length
dynamic (1 to the context):

```python
program = torch.export.load("model.pt2")      # only from a source you trust: it may unpickle
logits = program.module()(ids)
```

`prefill.pt2` and `decode.pt2` generate with a key/value cache and a Python loop (torch.export
programs, batch and lengths dynamic). `prefill(ids)` gives the next-token logits and the
cache of up to `model.block_size` tokens; `step(next_id, cache)` (decode.pt2) feeds one token and
returns the logits and the cache one position longer. When the context is full, prefill
the last 3/4 of the window again:

```python
prefill = torch.export.load("prefill.pt2").module()
step = torch.export.load("decode.pt2").module()
context, keep = model.block_size, 3 * model.block_size // 4
window = ids[:, -context:]
logits, cache = prefill(window)
new_ids = []
for _ in range(200):
    next_id = torch.multinomial((logits / 0.8).softmax(-1), 1)  # or logits.argmax(-1, keepdim=True)
    new_ids.append(next_id.item())
    window = torch.cat([window, next_id], dim=1)
    if window.size(1) <= context:
        logits, cache = step(next_id, cache)
    else:
        window = window[:, -keep:]
        logits, cache = prefill(window)
print(decode(new_ids))
```

`step.onnx` is prefill and decode in one ONNX graph for ONNX Runtime (`pip install
onnxruntime`): `ids` (batch, S) at positions `length` .. `length` + S - 1 after a cache of
`length` positions -> the next-token logits. The cache is one key and one value tensor a
layer, each as long as the context (`past_key_0`, `past_value_0`, ... in; `present_key_0`,
... out). Bind one buffer as both past and present and ONNX Runtime writes each step's keys
and values into it in place:

```python
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession("step.onnx")
binding = session.io_binding()
binding.bind_output("logits")  # the first output: get_outputs()[0] below
batch, shape = ids.size(0), session.get_inputs()[2].shape[1:]  # n_head, context, head_size
for past in session.get_inputs()[2:]:
    buffer = ort.OrtValue.ortvalue_from_shape_and_type([batch, *shape], np.float32)
    binding.bind_ortvalue_input(past.name, buffer)
    binding.bind_ortvalue_output(past.name.replace("past_", "present_"), buffer)

def run(new_ids, length):
    binding.bind_cpu_input("ids", new_ids)
    binding.bind_cpu_input("length", np.array(length, np.int64))
    session.run_with_iobinding(binding)
    return binding.get_outputs()[0].numpy()  # the logits; the cache stays in place

logits, length, new_ids = run(ids.numpy(), 0), ids.size(1), []
for _ in range(model.block_size - ids.size(1)):  # within the context (past it: as above)
    next_id = logits.argmax(-1)[:, None]
    new_ids.append(int(next_id[0, 0]))
    logits, length = run(next_id, length), length + 1
print(decode(new_ids))
```

`hf/` is the same model for Hugging Face `transformers` (GPT-2 with the exact GELU):
`AutoModelForCausalLM.from_pretrained("hf")` and `AutoTokenizer.from_pretrained("hf")`,
offline; prompt and new tokens together must fit the context.

`evaluation_metrics.json` holds the validation metrics, the model's configuration and
the tokenizer's identity. The context is `model.block_size` tokens; past it, `generate`
keeps the last 3/4 of the window and goes on. `train_log.csv` and `eval_log.csv` are the
training and validation loss by step.
"""


def evaluation_record(ckpt: dict[str, Any], metrics: dict[str, Any],
                      weights_sha256: str, n_params: int) -> dict[str, Any]:
    """evaluation_metrics.json: the validation metrics, the model (its `model` section of
    params.yaml and the vocabulary size that with it rebuilds the model, the parameter
    count, the step, the weights' hash) and the tokenizer's identity."""
    tokenizer = {k: v for k, v in ckpt["tokenizer"].items() if k != "vocab"}
    config = {**ckpt["model_config"], "vocab_size": ckpt["tokenizer"]["vocab_size"]}
    return {
        "metrics": metrics,
        "model": {"name": "GPT-Mini", "config": config, "parameters": n_params,
                  "step": ckpt["step"], "weights_sha256": weights_sha256},
        "tokenizer": tokenizer,
    }


def readme(record: dict[str, Any]) -> str:
    """README.md: how to use the export with torch alone, then what this model is and how
    it scored on the validation split. The same record gives the same bytes."""
    metrics = record.get("metrics") or {}
    scored = (f"Validation metrics:\n\n{metrics_markdown(metrics)}" if metrics_line(metrics)
              else "No validation metrics were recorded.\n")
    return (f"{USAGE}\n## This model\n\n{describe_model(record)}.\n\n{scored}")


def export_programs(model: GPT) -> dict[str, torch.export.ExportedProgram]:
    """The forward pass and the two generation steps (gptmini.export.programs) as torch.export
    programs, by file name: the batch, the sequence length and the cache length are
    dynamic."""
    ids, ids_shape = example_prompt(model)
    prefill, decode = step_programs(model)
    return {PROGRAM_FILE: export_program(model, (ids,), {"idx": ids_shape}),
            PREFILL_FILE: prefill, DECODE_FILE: decode}


def reproducible_archive(data: bytes) -> bytes:
    """A torch zip archive (TorchScript, torch.export) rewritten so that the same model gives
    the same bytes wherever and whenever it is saved: TorchScript's `*.debug_pkl` source maps
    (which hold the absolute path of model.py) are dropped, `.data/serialization_id` (partly
    random) becomes a hash of the contents, and every entry gets one fixed date. TorchScript's
    generated code also follows Python's string hashing, so the export stage runs with
    PYTHONHASHSEED=0 (dvc.yaml)."""
    import hashlib
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    entries = [(info.filename, source.read(info)) for info in source.infolist()
               if not info.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, content in entries:
        if not name.endswith(".data/serialization_id"):
            digest.update(name.encode() + b"\0" + content)
    serialization_id = str(int(digest.hexdigest(), 16))[:40].zfill(40).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            if name.endswith(".data/serialization_id"):
                content = serialization_id
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def _save_archive(save: Any, obj: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    save(obj, buffer)
    path.write_bytes(reproducible_archive(buffer.getvalue()))


def export(checkpoint: str | Path, metrics_json: str | Path, out_dir: str | Path, *,
           train_log: str | Path | None = None, eval_log: str | Path | None = None
           ) -> dict[str, Any]:
    """Write model.ts, the torch.export programs, tokenizer.json, evaluation_metrics.json,
    README.md and the Hugging Face folder hf/ to `out_dir`, and copies of the training logs
    when given and present."""
    from gptmini.export.hf import write_hf_folder  # imports transformers only when called
    from gptmini.export.onnx import write_onnx  # imports onnx only when called

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    record = evaluation_record(ckpt, json.loads(Path(metrics_json).read_text()),
                               weights_sha256(model), model.num_parameters())
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the one
        # format that carries methods (generate) and loads with torch alone.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    programs = export_programs(model)
    with atomic_dir(out_dir) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _save_archive(torch.jit.save, scripted, tmp / MODEL_FILE)
        for name, program in programs.items():
            _save_archive(torch.export.save, program, tmp / name)
        write_onnx(model, tmp)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(ckpt["tokenizer"], indent=2) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (tmp / README_FILE).write_text(readme(record))
        for log, name in ((train_log, TRAIN_LOG_FILE), (eval_log, EVAL_LOG_FILE)):
            if log is not None and Path(log).is_file():
                shutil.copyfile(log, tmp / name)
        write_hf_folder(ckpt, model, tmp / HF_DIR)
    return record
