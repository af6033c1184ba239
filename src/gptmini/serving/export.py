"""The export: a TorchScript model (forward and KV-cache `generate`), a torch.export
program of the forward pass, the tokenizer definition, the evaluation metrics and the
training logs, in one directory that torch alone can use, without this project's code.

`load_export` reads it back for the CLI and the app, through TorchScript and JSON only:
nothing in it is unpickled. The pipeline's export stage is `gptmini.serving.registry.
export_stage`: this export, then the MLflow Model made of it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptmini.core.atomic import atomic_dir
from gptmini.core.hashing import weights_sha256
from gptmini.data.tokenizers import Tokenizer, from_definition
from gptmini.model import GPT
from gptmini.report import describe_model, describe_tokenizer, metrics_line, metrics_markdown
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint

MODEL_FILE = "model.ts"
PROGRAM_FILE = "model.pt2"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "evaluation_metrics.json"
TRAIN_LOG_FILE = "train_log.csv"
EVAL_LOG_FILE = "eval_log.csv"
MLFLOW_ARTIFACT = "export"  # the export's folder in the pipeline's run and in its MLflow Model

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


def export_program(model: GPT) -> torch.export.ExportedProgram:
    """The forward pass as a torch.export program with a dynamic batch and sequence length.
    The nodes' stack traces (absolute paths of this checkout's files) are left out."""
    seq = torch.export.Dim("seq", min=1, max=model.block_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros(2, max(2, min(8, model.block_size)), dtype=torch.long)
    program = torch.export.export(model, (example,),
                                  dynamic_shapes={"idx": {0: batch, 1: seq}})
    for node in program.graph_module.graph.nodes:
        node.meta.pop("stack_trace", None)
    return program


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
    """Write model.ts, model.pt2, tokenizer.json, evaluation_metrics.json and README.md to
    `out_dir`, and copies of the training logs when given and present."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    record = evaluation_record(ckpt, json.loads(Path(metrics_json).read_text()),
                               weights_sha256(model), model.num_parameters())
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the one
        # format that carries methods (generate) and loads with torch alone.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    program = export_program(model)
    with atomic_dir(out_dir) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _save_archive(torch.jit.save, scripted, tmp / MODEL_FILE)
        _save_archive(torch.export.save, program, tmp / PROGRAM_FILE)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(ckpt["tokenizer"], indent=2) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(readme(record))
        for log, name in ((train_log, TRAIN_LOG_FILE), (eval_log, EVAL_LOG_FILE)):
            if log is not None and Path(log).is_file():
                shutil.copyfile(log, tmp / name)
    return record


class ExportError(RuntimeError):
    """The export directory is missing, incomplete or not usable, said in one line."""


@dataclass
class LoadedExport:
    directory: Path
    model: torch.jit.ScriptModule
    tokenizer: Tokenizer
    record: dict[str, Any]

    @property
    def block_size(self) -> int:
        return int(self.model.block_size)


def load_export(export_dir: str | Path) -> LoadedExport:
    """The TorchScript model, tokenizer and evaluation record of an export directory."""
    directory = Path(export_dir)
    if not directory.is_dir():
        raise ExportError(f"no export at {directory}/: run the pipeline (dvc repro) or "
                          "point --export-dir at an export directory")
    for name in (MODEL_FILE, TOKENIZER_FILE, METRICS_FILE):
        if not (directory / name).is_file():
            raise ExportError(f"{directory}/ has no {name}: not a complete export; run the "
                              "export stage again (dvc repro)")
    try:
        model = torch.jit.load(str(directory / MODEL_FILE), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{directory / MODEL_FILE} is not a TorchScript model: {first}"
                          ) from None
    if not hasattr(model, "generate"):
        raise ExportError(f"{directory / MODEL_FILE} was exported before generation was "
                          "added: run the export stage again (dvc repro)")
    try:
        definition = json.loads((directory / TOKENIZER_FILE).read_text())
        record = json.loads((directory / METRICS_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{directory}/: unreadable tokenizer or metrics file: {exc}") from None
    try:
        tokenizer = from_definition(definition)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{directory / TOKENIZER_FILE}: not a usable tokenizer definition: "
                          f"{exc}") from None
    except Exception as exc:  # tiktoken without network or a cache of its files
        raise ExportError(f"cannot load the tiktoken encoding {definition.get('encoding')!r}: "
                          f"{exc} (offline? set TIKTOKEN_CACHE_DIR)") from None
    n_vocab = int(model.wte.weight.size(0))
    if n_vocab != tokenizer.vocab_size:
        raise ExportError(f"{directory}/: the model has {n_vocab} tokens, the tokenizer "
                          f"{tokenizer.vocab_size}")
    return LoadedExport(directory, model, tokenizer, record)


def _size(n_bytes: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def describe(exported: LoadedExport) -> str:
    """A few lines on what the export holds, for `gptmini info`."""
    record, directory = exported.record, exported.directory
    model, metrics = record.get("model", {}), record.get("metrics") or {}
    files = {
        MODEL_FILE: "TorchScript: forward(ids) -> logits, generate(ids, ...) with a KV cache",
        PROGRAM_FILE: "torch.export program of forward (dynamic batch and sequence length)",
        TOKENIZER_FILE: f"tokenizer: {describe_tokenizer(exported.tokenizer.definition())}",
        METRICS_FILE: "validation metrics, model configuration, weights sha256",
        TRAIN_LOG_FILE: "training loss by step",
        EVAL_LOG_FILE: "train/validation loss estimates by step",
        "README.md": "how to use it with torch alone",
    }
    lines = [f"export: {directory.resolve()}/"]
    for name, what in files.items():
        path = directory / name
        if path.is_file():
            lines.append(f"  {name:<24}{_size(path.stat().st_size):>8}  {what}")
    lines.append(f"model: {describe_model(record)}")
    lines.append(f"weights sha256: {model.get('weights_sha256')}")
    if metrics_line(metrics):
        lines.append(f"validation: {metrics_line(metrics)}")
    return "\n".join(lines)
