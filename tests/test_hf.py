"""The export's Hugging Face folder (hf/) loads with transformers alone, offline, and is the
same model: the same logits, the same greedy text, the same token ids."""

from __future__ import annotations

import pytest
import torch

from gptmini.data.tokenizers import BpeTokenizer, CharTokenizer
from gptmini.export.hf import tokenizer_files, write_hf_folder
from gptmini.export.layout import HF_DIR, HF_WEIGHTS_FILE
from gptmini.export.writer import export
from gptmini.inference.generation import Sampling
from gptmini.inference.loading import export_summary, load_export
from gptmini.model import GPT
from helpers import model_config, needs_tiktoken
from tiny_export import build_tiny_export, generated

transformers = pytest.importorskip("transformers")

PROMPT = "ROMEO:\nThou"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("hf"))


def sharp_char_model(tmp_path, bias: bool = True):
    """A char model with random weights scaled up, so that its greedy text varies, and its
    Hugging Face folder (as the export writes it)."""
    torch.manual_seed(3)
    tok = CharTokenizer("ROMEOJULIET:\nthou art sweet, fair lord!")
    cfg = model_config(block_size=32, n_layer=2, n_head=2, n_embd=16, bias=bias)
    model = GPT(cfg, tok.vocab_size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    ckpt = {"model_config": cfg.model_dump(), "tokenizer": tok.definition(),
            "model": model.state_dict(), "step": 0}
    return model, tok, write_hf_folder(ckpt, model, tmp_path / HF_DIR)


def load_hf(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True)
    assert not any(info.values()), info  # every weight named, none left over
    return model.eval(), transformers.AutoTokenizer.from_pretrained(folder)


def max_abs_diff(hf_model, model, ids):
    with torch.no_grad():
        return (hf_model(ids).logits - model(ids)).abs().max().item()


def test_the_export_holds_a_gpt2_folder_with_the_models_logits(tiny):
    folder = tiny.directory / HF_DIR
    hf_model, hf_tok = load_hf(folder)
    config = hf_model.config
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    assert config.activation_function == "gelu"  # exact, not GPT-2's tanh gelu_new
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions,
            config.vocab_size) == (2, 2, 16, 24, tiny.tokenizer.vocab_size)
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()
    text = "First Citizen:\nGood lord"  # 24 characters: the context
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tiny.tokenizer.encode(text)
    assert max_abs_diff(hf_model, tiny.model, ids) <= 1e-5
    batch = torch.randint(0, tiny.tokenizer.vocab_size, (3, 24), generator=torch.Generator()
                          .manual_seed(0))
    assert max_abs_diff(hf_model, tiny.model, batch) <= 1e-5  # the whole context


@pytest.mark.parametrize("bias", [True, False])
def test_greedy_text_is_the_projects_greedy_text(tmp_path, bias):
    model, tok, folder = sharp_char_model(tmp_path, bias)
    hf_model, hf_tok = load_hf(folder)
    assert max_abs_diff(hf_model, model, torch.tensor([tok.encode(PROMPT * 2)])) <= 1e-5
    n = 32 - len(PROMPT)  # transformers' GPT-2 stops at the context (no sliding window)
    ours = generated(model, tok, PROMPT, Sampling(max_new_tokens=n, temperature=0.0))
    assert len(set(ours)) > 3  # a text that tells models apart
    ids = hf_tok(PROMPT, return_tensors="pt")["input_ids"]
    out = hf_model.generate(ids, max_new_tokens=n, do_sample=False)
    assert hf_tok.decode(out[0, ids.size(1):]) == ours
    pipe = transformers.pipeline("text-generation", model=str(folder))
    result = pipe(PROMPT, max_new_tokens=n, do_sample=False)
    assert result[0]["generated_text"] == PROMPT + ours


def test_the_pipeline_samples_with_the_generation_config(tiny):
    pipe = transformers.pipeline("text-generation", model=str(tiny.directory / HF_DIR))
    generation = pipe.model.generation_config
    assert generation.do_sample and generation.temperature == 0.8 and generation.top_k == 0
    text = pipe("ROMEO:", max_new_tokens=10)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) == 16


def test_the_char_tokenizer_round_trips_text_with_newlines(tiny):
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny.directory / HF_DIR)
    text = "\n\nKING HENRY:\nGood  lord , sweet ; heart !\n\n\nthou\n"
    ids = hf_tok(text)["input_ids"]
    assert ids == tiny.tokenizer.encode(text)
    assert hf_tok.decode(ids) == text
    assert "".join(hf_tok.convert_ids_to_tokens(ids)) == text
    with pytest.raises(Exception, match="UNK"):  # not in the vocabulary: an error, as ours
        hf_tok("zebra~")


def test_the_folder_is_byte_identical_when_exported_twice(tiny, tmp_path):
    again = tmp_path / "export"
    export(tiny.checkpoint, tiny.directory / "evaluation_metrics.json", again)
    first, second = tiny.directory / HF_DIR, again / HF_DIR
    names = sorted(p.name for p in first.iterdir())
    assert HF_WEIGHTS_FILE in names and "tokenizer.json" in names
    assert sorted(p.name for p in second.iterdir()) == names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@needs_tiktoken
def test_the_bpe_tokenizer_gives_tiktokens_gpt2_ids(tmp_path):
    ours = BpeTokenizer("gpt2")
    for name, text in tokenizer_files(ours.definition(), 1024).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf_tok) == ours.vocab_size == 50257
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == 50256
    for text in ["ROMEO:\nWhat light through yonder window breaks?\n\n",
                 "I'll say they've 12345 apples, 3.14 -- don't.", "  two spaces  \t\ttabs \n",
                 "naïve café – “quoted” 日本語 🤖\r\n", "a" * 40 + " " * 7, ""]:
        ids = hf_tok(text)["input_ids"]
        assert ids == ours.encode(text), text
        assert hf_tok.decode(ids) == text


@needs_tiktoken
def test_a_bpe_model_folder_loads_with_gpt2s_special_token(tmp_path):
    torch.manual_seed(0)
    tok = BpeTokenizer("gpt2")
    cfg = model_config(block_size=16, n_layer=1, n_head=2, n_embd=8)
    model = GPT(cfg, tok.vocab_size).eval()
    ckpt = {"model_config": cfg.model_dump(), "tokenizer": tok.definition()}
    hf_model, hf_tok = load_hf(write_hf_folder(ckpt, model, tmp_path / HF_DIR))
    assert hf_model.config.eos_token_id == hf_model.generation_config.eos_token_id == 50256
    ids = hf_tok("To be, or not to be", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode("To be, or not to be")
    assert max_abs_diff(hf_model, model, ids) <= 1e-5


def test_info_and_the_exports_readme_name_the_folder(tiny):
    assert "\n  hf/ " in export_summary(load_export(tiny.directory))
    assert 'AutoModelForCausalLM.from_pretrained("hf")' in \
        (tiny.directory / "README.md").read_text()
