"""Generation: the key/value cache gives exactly the tokens that recomputing the context
would, past the context too; sampling filters; prompts and settings are checked."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import gptmini
from gptmini.data.text import InputError, check_text, printable
from gptmini.data.tokenizers import BpeTokenizer, CharTokenizer
from gptmini.inference.generation import (
    MAX_SEED,
    Sampling,
    generate_text,
    prepare_prompt,
    stream,
    token_stream,
)
from gptmini.inference.loading import load_export
from gptmini.model import GPT
from helpers import model_config, needs_tiktoken
from tiny_export import build_tiny_export

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = CharTokenizer("abcdefgh ,.\n:ROMEJULIT")
VOCAB = TOK.vocab_size
CFG = model_config(block_size=16, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG, VOCAB).eval()


def generated(model, tokenizer, prompt, sampling: Sampling) -> str:
    """The whole generated text at once."""
    return "".join(stream(model, tokenizer, prompt, sampling))


def recompute_reference(model: GPT, ids: list[int], n: int, temperature: float, top_k: int,
                        top_p: float, seed: int) -> list[int]:
    """No cache: the whole window through the plain forward for every token, with the same
    window policy (past the context, continue from the last `window_keep` tokens)."""
    generator = torch.Generator().manual_seed(seed)
    window = torch.tensor([ids[-model.block_size:]])
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(window)[:, -1]
            next_id = model.sample(logits, temperature, top_k, top_p, generator)
            out.append(int(next_id))
            window = torch.cat([window, next_id], dim=1)
            if window.size(1) > model.block_size:
                window = window[:, -model.window_keep:]
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.8, 5, 1.0), (1.3, 0, 0.9), (0.7, 8, 0.8), (0.0, 0, 1.0)])
@pytest.mark.parametrize("prompt_len", [1, 7, 16, 40])
def test_cache_gives_exactly_the_tokens_of_recomputing(model, temperature, top_k, top_p,
                                                       prompt_len):
    ids = torch.randint(0, VOCAB, (prompt_len,),
                        generator=torch.Generator().manual_seed(prompt_len)).tolist()
    n = 70  # more than four windows of 16: the window slides several times
    cached = list(token_stream(model, ids, Sampling(n, temperature, top_k or None, top_p,
                                                    seed=123)))
    assert cached == recompute_reference(model, ids, n, temperature, top_k, top_p, 123)


def test_cached_logits_match_the_plain_forward(model):
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache, window = model.prefill(idx[:, :5])
        assert torch.allclose(logits, model(idx[:, :5])[:, -1], atol=1e-5)
        for t in range(5, 16):
            logits, window = model.extend(window, cache, idx[:, t:t + 1])
            assert torch.allclose(logits, model(idx[:, :t + 1])[:, -1], atol=1e-5)
        assert torch.equal(window, idx)
        # Full: the next token restarts the cache from the last window_keep tokens.
        nxt = torch.zeros(2, 1, dtype=torch.long)
        logits, window = model.extend(window, cache, nxt)
        kept = torch.cat([idx, nxt], dim=1)[:, -model.window_keep:]
        assert torch.equal(window, kept)
        assert torch.allclose(logits, model(kept)[:, -1], atol=1e-5)


def test_scripted_generate_equals_eager_and_the_library(model):
    scripted = torch.jit.script(model)
    idx = torch.tensor([TOK.encode("ROMEO:\n")])
    with torch.no_grad():
        eager = model.generate(idx, 50, 0.9, 6, 0.95, 7)
        script = scripted.generate(idx, 50, 0.9, 6, 0.95, 7)
    library = list(token_stream(model, idx[0].tolist(), Sampling(50, 0.9, 6, 0.95, seed=7)))
    assert torch.equal(eager, script)
    assert eager[0].tolist() == library
    assert list(token_stream(scripted, idx[0].tolist(),
                             Sampling(50, 0.9, 6, 0.95, seed=7))) == library


def test_batched_generate_matches_single_rows(model):
    idx = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = model.generate(idx, 30, 0.0)
        rows = [model.generate(idx[i:i + 1], 30, 0.0) for i in range(3)]
    assert torch.equal(batch, torch.cat(rows))


def test_same_seed_same_text_other_seed_other_text(model):
    a = generated(model, TOK, "ROMEO:", Sampling(80, seed=1))
    assert a == generated(model, TOK, "ROMEO:", Sampling(80, seed=1))
    assert a != generated(model, TOK, "ROMEO:", Sampling(80, seed=2))
    assert len(a) == 80 and set(a) <= set(TOK.vocab)


def test_temperature_zero_is_greedy_whatever_the_seed(model):
    greedy = generated(model, TOK, "JULIET:", Sampling(40, temperature=0.0, seed=1))
    assert greedy == generated(model, TOK, "JULIET:", Sampling(40, temperature=0.0, seed=99))
    assert greedy == generated(model, TOK, "JULIET:", Sampling(40, top_k=1, seed=5))
    assert greedy == generated(model, TOK, "JULIET:", Sampling(40, top_p=1e-6, seed=5))
    # A temperature near 0 is greedy too, not a division overflowing into NaN.
    assert greedy == generated(model, TOK, "JULIET:", Sampling(40, temperature=1e-300, seed=5))
    assert len(generated(model, TOK, "JULIET:", Sampling(40, temperature=1e300, seed=5))) == 40


def test_top_k_and_top_p_keep_only_the_likely_tokens(model):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    drawn = model.sample(logits, 1.0, 2, 1.0, gen)
    assert set(drawn.flatten().tolist()) == {0, 1}
    assert set(model.sample(logits, 1.0, 0, 0.8, gen).flatten().tolist()) == {0, 1}
    assert set(model.sample(logits, 1.0, 0, 0.81, gen).flatten().tolist()) == {0, 1, 2}
    everything = model.sample(logits, 1.0, 0, 1.0, gen).flatten()
    assert set(everything.tolist()) == {0, 1, 2, 3}
    # No filter: the draws follow the probabilities.
    share = torch.bincount(everything, minlength=4).float() / len(everything)
    assert torch.allclose(share, probs[0], atol=0.04)


def test_stream_pieces_join_to_the_whole_text(model):
    sampling = Sampling(60, seed=3)
    pieces = list(stream(model, TOK, "ROMEO:", sampling))
    assert len(pieces) == 60
    assert "".join(pieces) == generated(model, TOK, "ROMEO:", sampling)


@pytest.mark.parametrize("stop", ["\n", "a", "e ", ", ", "zzz-never"])
def test_stop_string_ends_generation_before_it(model, stop):
    full = generated(model, TOK, "ROMEO:", Sampling(200, temperature=1.5, seed=4))
    stopped = generated(model, TOK, "ROMEO:", Sampling(200, temperature=1.5, seed=4, stop=stop))
    expected = full[:full.find(stop)] if stop in full else full
    assert stopped == expected
    assert stop not in stopped


def test_an_empty_prompt_starts_from_a_newline(model):
    prompt = prepare_prompt("", TOK, CFG.block_size)
    assert prompt.ids == TOK.encode("\n")
    assert "empty" in prompt.notices[0]
    assert len(generated(model, TOK, "", Sampling(10, seed=0))) == 10


def test_a_prompt_longer_than_the_context_keeps_its_last_window():
    text = "abc defg, " * 10
    prompt = prepare_prompt(text, TOK, CFG.block_size)
    assert prompt.ids == TOK.encode(text)[-CFG.block_size:]
    assert "100 tokens long" in prompt.notices[0] and "last 16" in prompt.notices[0]


def test_characters_outside_the_vocabulary_are_named():
    with pytest.raises(InputError, match=r"outside the model's vocabulary.*'é' \(U\+00E9\), "
                                         r"'😀' \(U\+1F600\)"):
        prepare_prompt("abc é 😀", TOK, CFG.block_size)


@pytest.mark.parametrize("text,named", [("a\x1b[31mb", "U+001B"), ("a\x00b", "U+0000"),
                                        ("a\x07", "U+0007"), ("\ud800", "U+D800")])
def test_control_characters_are_refused(text, named):
    with pytest.raises(InputError, match=rf"control characters.*{re.escape(named)}"):
        prepare_prompt(text, TOK, CFG.block_size)


def test_line_breaks_are_normalised():
    assert check_text("a\r\nb\rc", TOK) == "a\nb\nc"


def test_printable_escapes_terminal_controls():
    assert printable("ok\n\tfine") == "ok\n\tfine"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"


@pytest.mark.parametrize("sampling,message", [
    (Sampling(temperature=-0.5), "temperature = -0.5: must be a number, 0 or more"),
    (Sampling(temperature=math.nan), "temperature = nan"),
    (Sampling(temperature=math.inf), "temperature = inf"),
    (Sampling(top_k=0), "top-k = 0: must be a whole number from 1 to the vocabulary size"),
    (Sampling(top_k=TOK.vocab_size + 1), f"top-k = {TOK.vocab_size + 1}"),
    (Sampling(top_k=2.5), "top-k = 2.5"),
    (Sampling(top_p=0.0), r"top-p = 0.0: must be in \(0, 1\]"),
    (Sampling(top_p=1.01), "top-p = 1.01"),
    (Sampling(top_p=-1), "top-p = -1"),
    (Sampling(max_new_tokens=0), "length = 0: must be a whole number, 1 or more"),
    (Sampling(max_new_tokens=True), "length = True"),
    (Sampling(seed=-3), "seed = -3"),
    (Sampling(stop=""), "stop = ''"),
])
def test_bad_sampling_values_get_a_clear_message(model, sampling, message):
    with pytest.raises(InputError, match=message):
        generated(model, TOK, "ROMEO:", sampling)


USER = {"length": 10, "temperature": 0.8, "top_k": None, "top_p": 1.0, "seed": None}


def test_user_values_whole_floats_and_ints_are_taken():
    sampling = Sampling.from_user(length=5.0, temperature=1, top_k=3.0, top_p=1, seed=7.0,
                                  stop="\n", vocab_size=VOCAB)
    assert sampling == Sampling(5, 1.0, 3, 1.0, seed=7, stop="\n")
    assert type(sampling.max_new_tokens) is int and type(sampling.top_k) is int
    assert type(sampling.temperature) is float and type(sampling.top_p) is float
    assert Sampling.from_user(**USER, vocab_size=VOCAB) == Sampling(10, 0.8)
    assert Sampling.from_user(**{**USER, "seed": MAX_SEED}, vocab_size=VOCAB).seed == MAX_SEED


@pytest.mark.parametrize("changes,message", [
    ({"length": 0}, "length = 0: must be a whole number, 1 or more"),
    ({"length": 0.0}, "length = 0: must be a whole number, 1 or more"),
    ({"length": 2.5}, "length = 2.5: must be a whole number"),
    ({"length": None}, "length = None: must be a whole number"),
    ({"length": "10"}, "length = '10': must be a whole number"),
    ({"length": True}, "length = True"),
    ({"length": 2001}, "length = 2001: must be at most 2000"),
    ({"temperature": -1}, r"temperature = -1.0: must be a number, 0 or more \(0 is greedy\)"),
    ({"temperature": None}, "temperature = None: must be a number"),
    ({"temperature": math.nan}, "temperature = nan"),
    ({"top_k": 0}, "top-k = 0: must be a whole number from 1 to the vocabulary size"),
    ({"top_k": VOCAB + 1.0}, f"top-k = {VOCAB + 1}: "),
    ({"top_k": 2.5}, "top-k = 2.5"),
    ({"top_p": 0}, r"top-p = 0.0: must be in \(0, 1\]"),
    ({"top_p": None}, "top-p = None"),
    ({"seed": -1}, "seed = -1: must be a whole number from 0"),
    ({"seed": 1.5}, "seed = 1.5"),
    ({"seed": MAX_SEED + 1}, f"seed = {MAX_SEED + 1}"),
])
def test_bad_user_values_get_the_same_clear_messages(changes, message):
    with pytest.raises(InputError, match=message):
        Sampling.from_user(**{**USER, **changes}, vocab_size=VOCAB, max_tokens=2000)


def test_top_k_equal_to_the_vocabulary_is_all_of_it(model):
    a = generated(model, TOK, "R", Sampling(30, top_k=TOK.vocab_size, seed=8))
    assert a == generated(model, TOK, "R", Sampling(30, seed=8))


@needs_tiktoken
def test_bpe_stream_never_splits_a_character():
    tok = BpeTokenizer("gpt2")
    torch.manual_seed(0)
    bpe_model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16),
                    tok.vocab_size).eval()
    sampling = Sampling(40, seed=0)
    ids = list(token_stream(bpe_model, tok.encode("Hello"), sampling))
    text = "".join(stream(bpe_model, tok, "Hello", sampling))
    assert text == tok.decode(ids)
    from gptmini.data.tokenizers import Detokenizer

    ids = tok.encode("naïve café 😀 — fin")
    detok = Detokenizer(tok)
    pieces = [detok.piece(t) for t in ids]
    assert "".join(pieces) + detok.flush() == "naïve café 😀 — fin"
    assert all("\ufffd" not in p for p in pieces)


FRONT_ENDS = ("cli/generate.py", "app/page.py", "export/pyfunc.py")


def test_the_front_ends_run_one_generation_sequence_with_one_set_of_defaults():
    """The CLI, the app and the pyfunc call generate_text; none checks values, fixes a seed
    or spells a sampling default or limit of its own."""
    package = Path(gptmini.__file__).parent
    for name in FRONT_ENDS:
        text = (package / name).read_text()
        assert "generate_text(" in text, name
        for own in ("from_user(", "random_seed(", "MAX_NEW_TOKENS =", "default=0.8",
                    "value=0.8", "default=500", "value=500", '("long", 200)'):
            assert own not in text, f"{name} has {own!r}"
    for path in package.rglob("*.py"):
        if path.name != "generation.py":
            assert "MAX_NEW_TOKENS =" not in path.read_text(), path


def test_generate_text_checks_before_it_starts_and_fixes_a_seed(tmp_path):
    exported = load_export(build_tiny_export(tmp_path).directory)
    values = {"length": 20, "temperature": 0.8, "top_k": None, "top_p": 1.0}
    first = generate_text(exported, "ROMEO:", **values)
    assert first.sampling.seed is not None and first.prompt.text == "ROMEO:"
    again = generate_text(exported, "ROMEO:", **values, seed=first.sampling.seed)
    assert "".join(first.pieces) == "".join(again.pieces)
    with pytest.raises(InputError, match="length = 30: must be at most 10"):
        generate_text(exported, "ROMEO:", **{**values, "length": 30}, max_tokens=10)
