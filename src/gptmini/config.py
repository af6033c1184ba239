"""Typed, validated configuration: one frozen dataclass per `params.yaml` section.

Every value is checked before any work starts. A bad value raises `ConfigError`
whose message is one line naming the key and what is allowed, e.g.
``params.yaml: train.learning_rate = -1.0: must be > 0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _spec(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: tuple[Any, ...] | None = None) -> Any:
    return field(default=default,
                 metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices})


@dataclass(frozen=True)
class DataConfig:
    url: str = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    sha256: str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

    def check(self) -> None:
        if not (len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256)):
            raise ConfigError(f"params.yaml: data.sha256 = {self.sha256!r}: "
                              "must be 64 lowercase hexadecimal characters")
        if not self.url.startswith(("https://", "http://", "file://")):
            raise ConfigError(f"params.yaml: data.url = {self.url!r}: "
                              "must start with https://, http:// or file://")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = _spec("char", choices=("char", "bpe"))
    encoding: str = "gpt2"
    val_fraction: float = _spec(0.1, gt=0.0, lt=1.0)

    def check(self) -> None:
        if self.kind == "bpe":
            import tiktoken

            names = tiktoken.list_encoding_names()
            if self.encoding not in names:
                raise ConfigError(f"params.yaml: tokenizer.encoding = {self.encoding!r}: "
                                  f"must be a tiktoken encoding, one of {', '.join(names)}")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = _spec(6, ge=1, le=128)
    n_embd: int = _spec(128, ge=8, le=16384)
    n_head: int = _spec(4, ge=1, le=256)
    block_size: int = _spec(256, ge=2, le=65536)
    dropout: float = _spec(0.0, ge=0.0, lt=1.0)
    bias: bool = True

    def check(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"params.yaml: model.n_embd = {self.n_embd}: must be divisible "
                              f"by model.n_head = {self.n_head}")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = _spec(1337, ge=0, le=2**32 - 1)
    device: str = _spec("auto", choices=("auto", "cpu", "cuda", "mps"))
    batch_size: int = _spec(32, ge=1, le=65536)
    max_steps: int = _spec(1000, ge=1, le=10_000_000)
    learning_rate: float = _spec(2e-3, gt=0.0, le=1.0)
    min_lr: float = _spec(1e-4, ge=0.0, le=1.0)
    warmup_steps: int = _spec(100, ge=0)
    weight_decay: float = _spec(0.1, ge=0.0, le=10.0)
    beta1: float = _spec(0.9, ge=0.0, lt=1.0)
    beta2: float = _spec(0.99, ge=0.0, lt=1.0)
    grad_clip: float = _spec(1.0, ge=0.0)
    eval_interval: int = _spec(100, ge=1)
    eval_iters: int = _spec(20, ge=1)
    keep_best: bool = True
    checkpoint_interval: int = _spec(100, ge=1)
    dtype: str = _spec("auto", choices=("auto", "float32", "bfloat16"))
    compile: bool = False
    processes: int = _spec(1, ge=1, le=1024)
    threads: int = _spec(0, ge=0, le=4096)

    def check(self) -> None:
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"params.yaml: train.min_lr = {self.min_lr}: must be <= "
                              f"train.learning_rate = {self.learning_rate}")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"params.yaml: train.warmup_steps = {self.warmup_steps}: must be < "
                              f"train.max_steps = {self.max_steps}")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _spec(32, ge=1, le=65536)
    device: str = _spec("auto", choices=("auto", "cpu", "cuda", "mps"))

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class Params:
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
}

Section = TypeVar("Section")


def _unknown(kind: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return ConfigError(f"params.yaml: unknown {kind} {key!r}{hint}")


def _check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    want = f.type if isinstance(f.type, type) else {"int": int, "float": float,
                                                    "str": str, "bool": bool}[f.type]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is float and isinstance(value, str):
        # YAML 1.1 reads `3e-4` (no dot) as a string; accept it as the number it means.
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"params.yaml: {key} = {value!r}: must be {want.__name__}")
    if want is float and not math.isfinite(value):
        raise ConfigError(f"params.yaml: {key} = {value!r}: must be a finite number")
    m = f.metadata
    if m.get("choices") is not None and value not in m["choices"]:
        raise ConfigError(f"params.yaml: {key} = {value!r}: must be one of "
                          f"{', '.join(map(str, m['choices']))}")
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    for name, _, test in bounds:
        bound = m.get(name)
        if bound is not None and not test(value, bound):
            allowed = " and ".join(f"{s} {m[n]}" for n, s, _ in bounds if m.get(n) is not None)
            raise ConfigError(f"params.yaml: {key} = {value!r}: must be {allowed}")
    return value


def parse_section(cls: type[Section], name: str, raw: Any) -> Section:
    """Build and check one section's dataclass from its raw YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: {name} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            raise _unknown("key", f"{name}.{key}", list(fields))
    values = {k: _check_value(f"{name}.{k}", fields[k], v) for k, v in raw.items()}
    section = cls(**values)
    section.check()  # type: ignore[attr-defined]
    return section


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: must be a mapping of sections")
    for name in raw:
        if name not in _SECTIONS:
            raise _unknown("section", str(name), list(_SECTIONS))
    sections = {name: parse_section(cls, name, raw.get(name)) for name, cls in _SECTIONS.items()}
    return Params(**sections)


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
