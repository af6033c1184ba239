from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from gptmini.core.config import (
    ConfigError,
    ModelConfig,
    json_schema,
    load_params,
    main,
    parse_params,
)
from helpers import REPO


def default_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid_and_match_the_seed_model():
    params = load_params(REPO / "params.yaml")
    m = params.model
    assert (m.n_layer, m.n_embd, m.n_head, m.block_size) == (6, 128, 4, 256)
    assert params.tokenizer.kind == "char"
    assert params.tokenizer.val_fraction == 0.1
    assert params.to_dict() == params.model_dump() == default_raw()


def test_model_config_round_trips_through_a_plain_dict():
    m = load_params(REPO / "params.yaml").model
    assert ModelConfig(**m.model_dump()) == m


def with_value(path: str, value) -> dict:
    raw = copy.deepcopy(default_raw())
    *sections, key = path.split(".")
    node = raw
    for s in sections:
        node = node[s]
    node[key] = value
    return raw


def without(path: str) -> dict:
    raw = copy.deepcopy(default_raw())
    section, key = path.split(".")
    del raw[section][key]
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
    ("train.batch_size", 0, ">= 1"),
    ("train.budget_chars", 2.5, "must be int"),
    ("train.budget_chars", 0, "must be >= 1 and <= 10000000000000"),
    ("train.device", "tpu", "one of auto, cpu, cuda, mps"),
    ("train.optimizer", "sgd", "one of adamw, muon"),
    ("train.schedule", "linear", "one of cosine, wsd"),
    ("train.data_order", "shuffled", "one of random, epochs"),
    ("train.kernels", "fast", "one of pinned, native"),
    ("train.decay_fraction", 0.0, "> 0.0 and <= 1.0"),
    ("train.muon_momentum", 1.0, ">= 0.0 and < 1.0"),
    ("train.muon_weight_decay", -0.1, ">= 0.0 and <= 10.0"),
    ("train.z_loss", 2.0, ">= 0.0 and <= 1.0"),
    ("train.next_next_loss", -1.0, ">= 0.0 and <= 10.0"),
    ("train.seq_warmup_steps", -5, ">= 0"),
    ("train.seed", True, "must be int"),
    ("tokenizer.kind", "word", "one of char, bpe"),
    ("tokenizer.val_fraction", 0.0, "> 0.0"),
    ("data.sha256", "abc", "64 lowercase hexadecimal"),
    ("data.url", "ftp://example.org/x", "https://"),
    ("evaluate.batch_size", -3, ">= 1"),
    # strict types: true is not 1, and 2.0 is not an int
    ("model.bias", 1, "must be bool"),
    ("train.budget_chars", 2.0, "must be int"),
    ("train.learning_rate", True, "must be float"),
    ("data.url", 7, "must be str"),
    ("train.grad_clip", float("inf"), "must be a finite number"),
    ("model.n_layer", 129, "must be >= 1 and <= 128"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_give_one_line_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(with_value(key, value))
    message = str(err.value)
    assert "\n" not in message
    assert f"params.yaml: {key} = " in message
    assert expected in message


def test_a_float_field_takes_an_int():
    lr = parse_params(with_value("train.learning_rate", 1)).train.learning_rate
    assert lr == 1.0 and isinstance(lr, float)


@pytest.mark.parametrize("key", ["train.budget_chars", "model.bias", "data.sha256"])
def test_a_missing_key_is_an_error_naming_it(key):
    with pytest.raises(ConfigError) as err:
        parse_params(without(key))
    assert str(err.value) == (f"params.yaml: {key}: missing "
                              "(params.yaml is the single source of every value)")


def test_a_missing_or_empty_section_is_an_error():
    raw = default_raw()
    del raw["evaluate"]
    with pytest.raises(ConfigError, match=r"^params.yaml: evaluate: missing \("):
        parse_params(raw)
    with pytest.raises(ConfigError, match="train = None: must be a mapping"):
        parse_params(with_value("train", None))


def test_unknown_key_is_rejected_with_a_suggestion():
    raw = default_raw()
    raw["train"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rat'; did you mean "
                                          r"'learning_rate'\?"):
        parse_params(raw)


def test_a_misspelt_key_is_reported_as_unknown_not_as_missing():
    raw = without("train.learning_rate")
    raw["train"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
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
    with pytest.raises(ConfigError, match="train.learning_rate = 'fast': must be float"):
        parse_params(with_value("train.learning_rate", "fast"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_params(bad)


def test_block_size_must_be_shorter_than_each_split():
    params = load_params(REPO / "params.yaml")
    params.check_token_counts(10_000, 257)
    with pytest.raises(ConfigError) as err:
        params.check_token_counts(256, 10_000)
    assert str(err.value) == ("params.yaml: model.block_size = 256: "
                              "must be < the train split's 256 tokens")
    with pytest.raises(ConfigError, match="must be < the val split's 100 tokens"):
        params.check_token_counts(10_000, 100)


CHAR = (1_003_854, 1_003_854)  # the real corpus's train split: characters, char tokens
GPT2 = (1_003_854, 301_966)    # and in gpt2 BPE tokens (3.32 characters a token)


def test_the_char_budget_buys_the_default_2300_steps_and_bpe_the_same_text():
    params = load_params(REPO / "params.yaml")
    assert params.train.budget_chars == 2300 * 16 * 256
    assert params.train_steps(*CHAR) == 2300
    bpe_steps = params.train_steps(*GPT2)
    assert bpe_steps == round(9_420_800 / (16 * 256 * 1_003_854 / 301_966)) == 692
    # the same characters, to within half a step
    assert abs(bpe_steps * 16 * 256 * GPT2[0] / GPT2[1] - 9_420_800) <= 16 * 256 * 3.33 / 2


def test_the_budget_counts_every_process_and_rounds_to_the_nearest_step():
    raw = with_value("train.processes", 2)
    assert parse_params(raw).train_steps(*CHAR) == 1150  # each step reads 2 x 16 x 256
    step = 16 * 256
    for budget, steps in ((step * 10 + step // 2 - 1, 10), (step * 10 + step // 2 + 1, 11),
                          (step // 2 + 1, 1)):
        raw = with_value("train.budget_chars", budget)
        raw["train"]["warmup_steps"] = 0
        assert parse_params(raw).train_steps(1, 1) == steps


def test_warmup_must_be_shorter_than_the_steps_the_budget_buys():
    params = parse_params(with_value("train.warmup_steps", 692))
    assert params.train_steps(*CHAR) == 2300
    with pytest.raises(ConfigError) as err:
        params.train_steps(*GPT2)
    assert str(err.value) == (
        "params.yaml: train.warmup_steps = 692: must be < the 692 steps that "
        "train.budget_chars = 9420800 buys, 16 x 1 x 256 tokens a step (batch_size x "
        "processes x block_size) at 3.324 characters per token")
    tiny = parse_params(with_value("train.budget_chars", 100))
    with pytest.raises(ConfigError, match=r"^params.yaml: train.budget_chars = 100: must buy "
                                          r"at least one step of 16 x 1 x 256 tokens"):
        tiny.train_steps(*CHAR)


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def test_the_committed_schema_is_the_generated_one_and_params_yaml_points_to_it(capsys):
    assert (REPO / "params.schema.json").read_text() == schema_text(), \
        "regenerate: python -m gptmini.core.config --schema > params.schema.json"
    main(["--schema"])
    assert capsys.readouterr().out == schema_text()
    first = (REPO / "params.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=params.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((REPO / "params.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_accepts_the_repo_params(validator):
    assert list(validator.iter_errors(default_raw())) == []


SCHEMA_BAD = {
    "wrong type": with_value("model.bias", 1),
    "wrong type str": with_value("model.n_layer", "six"),
    "out of range exclusive": with_value("train.learning_rate", 0.0),
    "out of range": with_value("evaluate.batch_size", 0),
    "bad choice": with_value("train.device", "tpu"),
    "bad pattern": with_value("data.sha256", "abc"),
    "unknown key": with_value("train.learning_rat", 0.1),
    "unknown section": with_value("trian", {}),
    "missing key": without("train.budget_chars"),
}


@pytest.mark.parametrize("raw", SCHEMA_BAD.values(), ids=list(SCHEMA_BAD))
def test_the_schema_rejects_what_the_loader_rejects(validator, raw):
    assert list(validator.iter_errors(raw))
    with pytest.raises(ConfigError):
        parse_params(raw)


def test_a_device_this_machine_lacks_is_one_line_naming_the_key():
    import torch

    from gptmini.core.device import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as err:
        pick_device("cuda", key="train.device")
    assert str(err.value) == ("params.yaml: train.device = cuda: CUDA is not available on "
                              "this machine; allowed here: auto, cpu")
