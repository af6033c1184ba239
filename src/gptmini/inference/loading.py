"""Reading an export back (gptmini.export.writer writes it) for the CLI, the app and the
pyfunc: through TorchScript, torch.export and JSON only, nothing unpickled; the weights
checked against the hash the export records.

`load_model` is the one loader of the CLI and the app: an export directory or an MLflow
model URI (`models:/gptmini@champion`, `models:/gptmini/3`, `runs:/<run id>/model`,
`models:/m-<id>`), whichever way it was named.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from gptmini.core.errors import first_line
from gptmini.core.hashing import weights_sha256
from gptmini.data.tokenizers import Tokenizer, from_definition
from gptmini.export.layout import (
    DECODE_FILE,
    FILES,
    HF_DESCRIPTION,
    HF_DIR,
    METRICS_FILE,
    MLFLOW_ARTIFACT,
    MODEL_FILE,
    PREFILL_FILE,
    TOKENIZER_FILE,
)
from gptmini.inference.programs import ProgramGenerator
from gptmini.model import GPT
from gptmini.report import describe_model, describe_tokenizer, metrics_line

URI_SCHEMES = ("models:/", "runs:/")


class ExportError(RuntimeError):
    """The export directory is missing, incomplete or not usable, said in one line."""


@dataclass
class LoadedExport:
    """`model` is model.ts (scoring); `programs` the torch.export generation steps;
    `generation_model` what the CLI, the app and the pyfunc generate with."""

    directory: Path
    model: torch.jit.ScriptModule
    tokenizer: Tokenizer
    record: dict[str, Any]
    programs: ProgramGenerator
    engine: str = "auto"  # what generates (gptmini.inference.engines.CHOICES)

    @property
    def block_size(self) -> int:
        return int(self.model.block_size)

    @cached_property
    def eager_model(self) -> GPT:
        """The model as an eager GPT (the record's configuration, model.ts's weights), for
        what the export does not carry (the attention maps); built on first use."""
        from gptmini.core.config import ModelConfig

        config = dict(self.record["model"]["config"])
        vocab_size = config.pop("vocab_size")
        model = GPT(ModelConfig(**config), vocab_size)
        model.load_state_dict(self.model.state_dict())
        return model.eval()

    @cached_property
    def generation_model(self) -> Any:
        """What generates: `engine`'s model (gptmini.inference.engines), made on first use."""
        from gptmini.inference.engines import load_generator

        return load_generator(self, self.engine)


def _require(directory: Path, *names: str) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise ExportError(f"{directory}/ has no {name}: not a complete export; run the "
                              "export stage again (dvc repro)")


def load_export(export_dir: str | Path) -> LoadedExport:
    """The TorchScript model, tokenizer and evaluation record of an export directory."""
    directory = Path(export_dir)
    if not directory.is_dir():
        raise ExportError(f"no export at {directory}/: run the pipeline (dvc repro) or "
                          "point --export-dir at an export directory")
    _require(directory, MODEL_FILE, TOKENIZER_FILE, METRICS_FILE)
    try:
        model = torch.jit.load(str(directory / MODEL_FILE), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"{directory / MODEL_FILE} is not a TorchScript model: "
                          f"{first_line(exc)}") from None
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
    recorded = (record.get("model") or {}).get("weights_sha256")
    if recorded and weights_sha256(model) != recorded:
        raise ExportError(f"{directory / MODEL_FILE}: its weights are not the ones "
                          f"{METRICS_FILE} records (sha256): the file is corrupted")
    n_vocab = int(model.wte.weight.size(0))
    if n_vocab != tokenizer.vocab_size:
        raise ExportError(f"{directory}/: the model has {n_vocab} tokens, the tokenizer "
                          f"{tokenizer.vocab_size}")
    return LoadedExport(directory, model, tokenizer, record, _load_programs(directory, model))


def _load_programs(directory: Path, model: torch.jit.ScriptModule) -> ProgramGenerator:
    """The export's generation programs (prefill.pt2, decode.pt2)."""
    _require(directory, PREFILL_FILE, DECODE_FILE)
    quiet = logging.getLogger("torch.export")  # it logs a traceback before it raises
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prefill = torch.export.load(directory / PREFILL_FILE)
            decode = torch.export.load(directory / DECODE_FILE)
    except Exception as exc:  # torch.export.load raises many kinds; say which file, in a line
        raise ExportError(f"{directory}/: cannot load the torch.export programs: "
                          f"{first_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    return ProgramGenerator(prefill, decode, int(model.block_size))


def _size(n_bytes: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def export_summary(exported: LoadedExport) -> str:
    """A few lines on what the export holds, for `gptmini info`."""
    record, directory = exported.record, exported.directory
    model, metrics = record.get("model", {}), record.get("metrics") or {}
    files = {**FILES, TOKENIZER_FILE:
             f"tokenizer: {describe_tokenizer(exported.tokenizer.definition())}"}
    lines = [f"export: {directory.resolve()}/"]
    for name, what in files.items():
        path = directory / name
        if path.is_file():
            lines.append(f"  {name:<24}{_size(path.stat().st_size):>8}  {what}")
    hf = directory / HF_DIR
    if hf.is_dir():
        size = sum(p.stat().st_size for p in hf.iterdir() if p.is_file())
        lines.append(f"  {HF_DIR + '/':<24}{_size(size):>8}  {HF_DESCRIPTION}")
    lines.append(f"model: {describe_model(record)}")
    lines.append(f"weights sha256: {model.get('weights_sha256')}")
    if metrics_line(metrics):
        lines.append(f"validation: {metrics_line(metrics)}")
    return "\n".join(lines)


def is_model_uri(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(URI_SCHEMES)


def load_model(source: str | Path) -> LoadedExport:
    """An export directory, or an MLflow model URI on the project's tracking store
    ($MLFLOW_TRACKING_URI, else the project's mlflow.db): the model's files are downloaded
    to a temporary directory that lives as long as this process."""
    if not is_model_uri(source):
        return load_export(source)
    import mlflow
    from mlflow.exceptions import MlflowException

    from gptmini.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    target = Path(tempfile.mkdtemp(prefix="gptmini-model-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=str(source),
                                                    dst_path=str(target))
    except MlflowException as exc:
        raise ExportError(f"cannot load {source} from {tracking_uri()}: {first_line(exc)}"
                          ) from None
    directory = Path(local) / "artifacts" / MLFLOW_ARTIFACT
    if not directory.is_dir():
        raise ExportError(f"{source} is not a GPT-Mini model (it has no "
                          f"artifacts/{MLFLOW_ARTIFACT}/)")
    return load_export(directory)
