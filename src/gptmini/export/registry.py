"""The export in MLflow's model registry.

`publish`, inside the pipeline's run (gptmini.export.stage), logs the export as an MLflow
Model (`gptmini.export.pyfunc`), registers it as a new
version of the registered model `gptmini` and moves the alias `champion` to it only when
its validation BPC (from the export's evaluation_metrics.json) is lower than the
champion's: BPC compares models with different tokenizers. Each version carries its BPC,
tokenizer and weights hash as tags.

The same run also holds the export's Hugging Face folder (`hf/`) as a model of MLflow's
transformers flavor, `hf`: a text-generation pipeline that `mlflow.transformers.load_model`
and `mlflow.pyfunc.load_model` load and `mlflow models serve` serves, with transformers
alone. It is logged, not registered: the registry's versions and their champion are the
project's model. `gptmini.inference.loading.load_model` loads a version back.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from gptmini.export.layout import HF_DIR, HF_GENERATION_CONFIG_FILE, MLFLOW_ARTIFACT

REGISTERED_MODEL = "gptmini"
CHAMPION = "champion"
BPC_TAG = "val_bpc"
MODEL_NAME = "model"            # the model's name in its run
HF_MODEL_NAME = "hf"            # the Hugging Face folder's, in the same run
# What the model needs where it is loaded, besides its own copy of gptmini's code.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "tiktoken", "pydantic", "pyyaml",
                "onnxruntime")  # onnxruntime: the pyfunc generates with the fastest engine
HF_REQUIREMENTS = ("transformers", "tokenizers", "safetensors", "torch")


@dataclass(frozen=True)
class Published:
    model_uri: str
    version: str
    bpc: float | None
    champion_bpc: float | None  # the champion's before this version (None: there was none)
    promoted: bool
    hf_model_uri: str | None = None  # the transformers-flavor model (None: no hf/ folder)

    def summary(self) -> str:
        was = ("no champion before" if self.champion_bpc is None
               else f"champion's {self.champion_bpc:.4f}")
        verdict = "now @champion" if self.promoted else "champion unchanged"
        bpc = "no BPC" if self.bpc is None else f"val BPC {self.bpc:.4f}"
        hf = "" if self.hf_model_uri is None else f"; hf/ logged as {self.hf_model_uri}"
        return (f"registered {REGISTERED_MODEL} version {self.version} ({bpc}; {was}): "
                f"{verdict}{hf}")


def requirements(names: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """The installed versions of what a model imports (a local version such as torch's
    +cpu left out, so that pip can install it)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


def log_model(export_dir: str | Path) -> Any:
    """Log the export as an MLflow Model in the active run: models from code, the export as
    its artifact and a copy of the `gptmini` package (without bytecode) as its code."""
    import mlflow

    import gptmini
    from gptmini.export import pyfunc
    from gptmini.export.pyfunc import input_example, signature

    package = Path(gptmini.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "gptmini"
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=pyfunc.__file__,
            artifacts={MLFLOW_ARTIFACT: str(Path(export_dir).resolve())},
            code_paths=[str(code)], signature=signature(), input_example=input_example(),
            pip_requirements=requirements())


def hf_signature(folder: Path) -> Any:
    """A string in, its continuation out (the prompt not repeated), and the generation
    settings a request may change: their defaults the folder's generation_config.json, and
    the project pyfunc's number of new tokens."""
    import json

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from gptmini.export.pyfunc import PARAMS

    config = json.loads((folder / HF_GENERATION_CONFIG_FILE).read_text())
    kinds = {"do_sample": "boolean", "temperature": "double", "top_k": "long",
             "top_p": "double"}
    params = [ParamSpec("max_new_tokens", "long", PARAMS["max_new_tokens"][1])]
    params += [ParamSpec(name, kind, config[name]) for name, kind in kinds.items()]
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec("string")]), params=ParamSchema(params))


def log_hf_model(export_dir: str | Path) -> Any | None:
    """Log the export's hf/ folder as a transformers-flavor model (a text-generation
    pipeline) in the active run; None for an export without the folder."""
    folder = Path(export_dir) / HF_DIR
    if not folder.is_dir():
        return None
    import mlflow
    import transformers

    # A pipeline, not the folder's path: MLflow 3.17 reads the folder's task through a
    # pipeline registry that transformers 5 changed (an AttributeError). The absolute
    # path: MLflow looks a model's card up on the Hub when its name could be a repo id.
    pipe = transformers.pipeline("text-generation", model=str(folder.resolve()), device="cpu")
    return mlflow.transformers.log_model(
        transformers_model=pipe, name=HF_MODEL_NAME, signature=hf_signature(folder),
        model_config={"return_full_text": False},
        pip_requirements=requirements(HF_REQUIREMENTS))


def _bpc(record: dict[str, Any]) -> float | None:
    value = (record.get("metrics") or {}).get("bpc")
    return None if value is None else float(value)


def champion_bpc(client: Any, name: str = REGISTERED_MODEL) -> tuple[str, float] | None:
    """The champion's version and validation BPC, or None when there is no champion (or
    it has no BPC, which any BPC beats)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = version.tags.get(BPC_TAG)
    return None if value is None else (version.version, float(value))


def register(model_uri: str, record: dict[str, Any], name: str = REGISTERED_MODEL
             ) -> Published:
    """Register `model_uri` as a new version of `name`, tagged with its BPC; move the
    champion alias to it when its BPC is strictly lower than the champion's."""
    import mlflow

    client = mlflow.MlflowClient()
    bpc = _bpc(record)
    tags = {"tokenizer": str((record.get("tokenizer") or {}).get("kind")),
            "weights_sha256": str((record.get("model") or {}).get("weights_sha256"))}
    if bpc is not None:
        tags[BPC_TAG] = repr(bpc)
    version = mlflow.register_model(model_uri, name, tags=tags).version
    current = champion_bpc(client, name)
    promoted = bpc is not None and (current is None or bpc < current[1])
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Published(model_uri, str(version), bpc, None if current is None else current[1],
                     promoted)


def publish(export_dir: str | Path, record: dict[str, Any]) -> Published:
    """Log the export as an MLflow Model in the active run, register it, and apply the
    champion rule; log its Hugging Face folder beside it."""
    info = log_model(export_dir)
    published = register(info.model_uri, record)
    hf = log_hf_model(export_dir)
    return replace(published, hf_model_uri=None if hf is None else hf.model_uri)
