from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from gptmini.config import ConfigError, load_params, parse_params


def default_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid_and_match_the_seed_model():
    params = load_params(REPO / "params.yaml")
    m = params.model
    assert (m.n_layer, m.n_embd, m.n_head, m.block_size) == (6, 128, 4, 256)
    assert params.tokenizer.kind == "char"
    assert params.tokenizer.val_fraction == 0.1


def with_value(path: str, value) -> dict:
    raw = copy.deepcopy(default_raw())
    *sections, key = path.split(".")
    node = raw
    for s in sections:
        node = node[s]
    node[key] = value
    return raw


BAD = [
    ("model.n_embd", 130, "divisible by model.n_head"),
    ("model.n_head", 0, ">= 1"),
    ("model.n_layer", "six", "must be int"),
    ("model.dropout", 1.0, "< 1.0"),
    ("model.block_size", 1, ">= 2"),
    ("model.bias", "yes", "must be bool"),
    ("train.learning_rate", -1.0, "> 0.0"),
    ("train.learning_rate", float("nan"), "finite"),
    ("train.min_lr", 0.5, "<= train.learning_rate"),
    ("train.warmup_steps", 5000, "< train.max_steps"),
    ("train.batch_size", 0, ">= 1"),
    ("train.max_steps", 2.5, "must be int"),
    ("train.device", "tpu", "one of auto, cpu, cuda, mps"),
    ("train.seed", True, "must be int"),
    ("tokenizer.kind", "word", "one of char, bpe"),
    ("tokenizer.val_fraction", 0.0, "> 0.0"),
    ("data.sha256", "abc", "64 lowercase hexadecimal"),
    ("data.url", "ftp://example.org/x", "https://"),
    ("evaluate.batch_size", -3, ">= 1"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_give_one_line_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(with_value(key, value))
    message = str(err.value)
    assert "\n" not in message
    assert f"params.yaml: {key} = " in message
    assert expected in message


def test_unknown_key_is_rejected_with_a_suggestion():
    raw = default_raw()
    raw["train"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat'; did you mean "
                                          r"'learning_rate'\?"):
        parse_params(raw)


def test_unknown_section_is_rejected():
    raw = default_raw()
    raw["trian"] = {}
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        parse_params(raw)


def test_unknown_tiktoken_encoding_is_rejected():
    raw = with_value("tokenizer.kind", "bpe")
    raw["tokenizer"]["encoding"] = "gpt9"
    with pytest.raises(ConfigError, match="tokenizer.encoding = 'gpt9': must be a tiktoken"):
        parse_params(raw)


def test_yaml_exponent_strings_are_read_as_numbers():
    params = parse_params(with_value("train.learning_rate", "3e-4"))
    assert params.train.learning_rate == pytest.approx(3e-4)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
