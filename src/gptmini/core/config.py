"""Typed, validated configuration: one frozen pydantic model per `params.yaml` section.

params.yaml is the single source of every value: no field has a default, so a missing key is
an error, and so is an unknown one. Types are strict (`true` is not `1`; a float field takes an
int and a YAML 1.1 exponent string like "3e-4"); ranges and choices are declared with `Field`
and `Literal` so the JSON Schema (`python -m gptmini.core.config --schema`, committed as
params.schema.json) carries them too; relations between keys are each section's validator.
Pydantic's report becomes one `ConfigError` line naming the key and what is allowed, e.g.
``params.yaml: train.learning_rate = -1.0: must be > 0.0 and <= 1.0``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

SOURCE = "params.yaml is the single source of every value"


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `3e-4` (no dot) as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]
Device = Literal["auto", "cpu", "cuda", "mps"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Where the corpus is downloaded from and the checksum it must match."""
    url: str = Field(pattern=r"^(https|http|file)://",
                     description="a URL starting with https://, http:// or file://")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                        description="64 lowercase hexadecimal characters")


class TokenizerConfig(_Strict):
    """How text becomes tokens and how much of it is held out for validation."""
    kind: Literal["char", "bpe"]
    encoding: str
    val_fraction: Float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _known_encoding(self) -> TokenizerConfig:
        if self.kind == "bpe":
            import tiktoken

            names = tiktoken.list_encoding_names()
            if self.encoding not in names:
                raise ConfigError(f"params.yaml: tokenizer.encoding = {self.encoding!r}: "
                                  f"must be a tiktoken encoding, one of {', '.join(names)}")
        return self


class ModelConfig(_Strict):
    """The transformer's shape."""
    n_layer: int = Field(ge=1, le=128)
    n_embd: int = Field(ge=8, le=16384)
    n_head: int = Field(ge=1, le=256)
    block_size: int = Field(ge=2, le=65536)
    dropout: Float = Field(ge=0.0, lt=1.0, description=(
        "dropout on the embeddings and on each residual branch's output"))
    attn_dropout: Float = Field(ge=0.0, lt=1.0, description=(
        "dropout on the attention probabilities (on a CPU it takes scaled_dot_product_"
        "attention off its fused kernel: a much slower step)"))
    bias: bool

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ConfigError(f"params.yaml: model.n_embd = {self.n_embd}: must be divisible "
                              f"by model.n_head = {self.n_head}")
        return self


class TrainConfig(_Strict):
    """The optimizer, schedule, evaluation cadence, checkpoints and processes."""
    seed: int = Field(ge=0, le=2**32 - 1)
    device: Device
    batch_size: int = Field(ge=1, le=65536)
    data_order: Literal["random", "epochs"] = Field(description=(
        "random: each training window drawn anywhere, with replacement; epochs: every "
        "non-overlapping window once per epoch, a fresh offset and order each epoch"))
    budget_chars: int = Field(ge=1, le=10**13, description=(
        "characters of training text to read; the number of steps follows from the batch, "
        "the context, the processes and the train split's characters per token"))
    optimizer: Literal["adamw", "muon"] = Field(description=(
        "adamw: AdamW for every weight; muon: torch.optim.Muon for the 2-D weights of the "
        "blocks, AdamW (learning_rate) for embeddings, LayerNorm gains and biases"))
    learning_rate: Float = Field(gt=0.0, le=1.0)
    muon_lr: Float = Field(gt=0.0, le=10.0, description="Muon's peak learning rate")
    muon_momentum: Float = Field(ge=0.0, lt=1.0)
    muon_momentum_warmup: int = Field(ge=0, description=(
        "steps over which Muon's momentum rises linearly from 0.85 to muon_momentum (0: off)"))
    min_lr: Float = Field(ge=0.0, le=1.0)
    schedule: Literal["cosine", "wsd"] = Field(description=(
        "after the warmup: cosine decay to min_lr, or warmup-stable-decay (flat, then a "
        "linear decay to min_lr over the last decay_fraction of the steps)"))
    decay_fraction: Float = Field(gt=0.0, le=1.0)
    decay_shape: Literal["linear", "sqrt"] = Field(description=(
        "wsd only: the decay's shape, linear or 1-sqrt (1 - sqrt of its progress)"))
    warmup_steps: int = Field(ge=0)
    seq_warmup_steps: int = Field(ge=0, description=(
        "0: off; else the first this many steps train on the first L tokens of each "
        "window, L rising linearly from block_size / 8 to block_size (sequence-length "
        "warmup: cheaper early steps, which read fewer characters)"))
    next_next_loss: Float = Field(ge=0.0, le=10.0, description=(
        "0: off; else a training-only head predicts the token after next from the final "
        "hidden state (a linear map and a LayerNorm into the tied head), its cross-entropy "
        "times this joining the loss; it is never saved, evaluated or exported"))
    weight_decay: Float = Field(ge=0.0, le=10.0, description=(
        "AdamW's decoupled weight decay, on its 2-D weights (all of them with adamw; the "
        "embeddings with muon)"))
    muon_weight_decay: Float = Field(ge=0.0, le=10.0, description=(
        "Muon's decoupled weight decay on the blocks' 2-D weights (optimizer muon only): "
        "each step multiplies them by 1 - lr x muon_weight_decay"))
    z_loss: Float = Field(ge=0.0, le=1.0, description=(
        "0: off; else this times the mean squared log-partition (logsumexp of the logits) "
        "is added to the training loss, pulling the logits' scale toward 0 (PaLM's z-loss); "
        "the plain head only (vocabularies up to gptmini.head.PLAIN_HEAD_MAX_VOCAB)"))
    beta1: Float = Field(ge=0.0, lt=1.0)
    beta2: Float = Field(ge=0.0, lt=1.0)
    grad_clip: Float = Field(ge=0.0)
    eval_interval: int = Field(ge=1)
    eval_iters: int = Field(ge=1)
    keep_best: bool
    ema_decay: Float = Field(ge=0.0, lt=1.0, description=(
        "0: off; else the model evaluated, kept and saved is an exponential moving average "
        "of the weights, its decay min(ema_decay, (1 + n) / (10 + n)) at its n-th update"))
    checkpoint_interval: int = Field(ge=1)
    dtype: Literal["auto", "float32", "bfloat16"]
    compile: bool
    processes: int = Field(ge=1, le=1024)
    threads: int = Field(ge=0, le=4096)
    kernels: Literal["pinned", "native"] = Field(description=(
        "pinned: the CPU kernel paths pinned to AVX2, one result per vendor (the reference "
        "bits); native: each library's fastest path for this CPU, for quick screens whose "
        "bits depend on the CPU generation"))

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"params.yaml: train.min_lr = {self.min_lr}: must be <= "
                              f"train.learning_rate = {self.learning_rate}")
        return self


class EvaluateConfig(_Strict):
    """The exact evaluation of the saved model."""
    batch_size: int = Field(ge=1, le=65536)
    device: Device


class Params(_Strict):
    """Every section of params.yaml."""
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.model_dump()

    def recipe(self) -> dict[str, dict[str, Any]]:
        """What a training run records as its params and resumes on: every section but
        evaluate's (they do not change training, so a run resumes across changes to them)."""
        return {k: v for k, v in self.to_dict().items() if k != "evaluate"}

    def train_steps(self, train_chars: int, train_tokens: int) -> int:
        """The optimizer steps that train.budget_chars buys: budget_chars / (batch_size x
        processes x block_size x chars per token), with the train split's characters and
        tokens (the tokenize stage's counts), rounded to the nearest step (halves to even).
        A step reads batch_size x processes windows of block_size tokens, so changing only
        the tokenizer reads the same amount of text (docs/pipeline.md gives the default's
        steps). warmup_steps must be fewer than the steps."""
        cfg, block = self.train, self.model.block_size
        if train_chars < 1 or train_tokens < 1:
            raise ConfigError(f"the train split has {train_chars} characters in "
                              f"{train_tokens} tokens: no budget can be spent on it")
        tokens_per_step = cfg.batch_size * cfg.processes * block
        # budget / (tokens_per_step * chars / tokens), in integers: no float rounding
        steps = round(Fraction(cfg.budget_chars * train_tokens, tokens_per_step * train_chars))
        step = (f"{cfg.batch_size} x {cfg.processes} x {block} tokens a step (batch_size x "
                f"processes x block_size) at {train_chars / train_tokens:.4g} characters "
                f"per token")
        if steps < 1:
            raise ConfigError(f"params.yaml: train.budget_chars = {cfg.budget_chars}: must "
                              f"buy at least one step of {step}")
        if cfg.warmup_steps >= steps:
            raise ConfigError(f"params.yaml: train.warmup_steps = {cfg.warmup_steps}: must be "
                              f"< the {steps} steps that train.budget_chars = "
                              f"{cfg.budget_chars} buys, {step}")
        return steps

    def check_token_counts(self, train_tokens: int, val_tokens: int) -> None:
        """Each split must hold more tokens than one context window."""
        n = self.model.block_size
        for split, count in (("train", train_tokens), ("val", val_tokens)):
            if count <= n:
                raise ConfigError(f"params.yaml: model.block_size = {n}: "
                                  f"must be < the {split} split's {count} tokens")


_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def _allowed(kind: str, section: type[BaseModel], name: str) -> str:
    """What a field accepts, in the words of an error message after 'must be'."""
    info = section.model_fields[name]
    if kind == "finite_number":
        return "a finite number"
    if kind == "literal_error":
        return "one of " + ", ".join(get_args(info.annotation))
    if kind == "string_pattern_mismatch":
        return str(info.description)
    if kind in _BOUNDS:  # name the field's whole range, not only the bound that failed
        return " and ".join(f"{sym} {getattr(m, attr)}" for attr, sym in _BOUNDS.values()
                            for m in info.metadata if hasattr(m, attr))
    return getattr(info.annotation, "__name__", str(info.annotation))


def _one_line(exc: ValidationError) -> ConfigError:
    """Translate pydantic's report into one line about its first error (unknown keys first)."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, loc, value = err["type"], tuple(map(str, err["loc"])), err.get("input")
    key = ".".join(loc)
    if isinstance(err.get("ctx", {}).get("error"), ConfigError):
        return err["ctx"]["error"]
    section = Params.model_fields[loc[0]].annotation if loc[0] in Params.model_fields else None
    if kind == "extra_forbidden":
        what, known = ("section", Params) if len(loc) == 1 else ("key", section)
        names = list(known.model_fields)  # type: ignore[union-attr]
        close = difflib.get_close_matches(loc[-1], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
        return ConfigError(f"params.yaml: unknown {what} {key!r}{hint}")
    if kind == "missing":
        return ConfigError(f"params.yaml: {key}: missing ({SOURCE})")
    if len(loc) == 1:
        return ConfigError(f"params.yaml: {key} = {value!r}: must be a mapping of keys to values")
    return ConfigError(f"params.yaml: {key} = {value!r}: must be "
                       f"{_allowed(kind, section, loc[1])}")  # type: ignore[arg-type]


def parse_params(raw: Any) -> Params:
    """Validate the parsed YAML of the whole params file."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_params(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of params.yaml, as committed in params.schema.json."""
    schema = Params.model_json_schema()
    return {**schema, "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "GPT-Mini params.yaml",
            "description": f"Every setting of the GPT-Mini pipeline; {SOURCE}. Relations between "
                           "keys (n_embd divisible by n_head, min_lr <= learning_rate, "
                           "warmup_steps < the steps budget_chars buys) are checked by "
                           "src/gptmini/core/config.py."}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptmini.core.config")
    parser.add_argument("--schema", action="store_true", required=True,
                        help="print the JSON Schema of params.yaml (params.schema.json)")
    parser.parse_args(argv)
    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
