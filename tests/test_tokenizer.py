from __future__ import annotations

import json

import numpy as np
import pytest

from gptmini.data.tokenizers import BpeTokenizer, CharTokenizer, from_definition
from gptmini.data.tokens import iter_chunks, load_tokens, prepare, token_dtype
from helpers import make_corpus, needs_tiktoken, tokenizer_config


def test_char_round_trip_and_definition():
    text = make_corpus(50)
    tok = CharTokenizer(text)
    assert tok.decode(tok.encode(text)) == text
    again = from_definition(json.loads(json.dumps(tok.definition())))
    assert again.encode(text) == tok.encode(text)
    assert tok.vocab == sorted(set(text))


def test_char_unknown_characters_are_named():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"\['z'\]"):
        tok.encode("abz")


@needs_tiktoken
def test_bpe_batch_encoding_equals_encode_ordinary_even_with_special_token_text():
    tok = BpeTokenizer("gpt2")
    texts = [make_corpus(40), "a<|endoftext|>b  \n\n c", "", "é naïve ☃"]
    got = tok.encode_batch(texts)
    assert [list(map(int, ids)) for ids in got] == [tok.enc.encode_ordinary(t) for t in texts]


@needs_tiktoken
def test_bpe_round_trip_and_definition():
    text = make_corpus(50)
    tok = BpeTokenizer("gpt2")
    assert tok.vocab_size == 50257
    assert tok.decode(tok.encode(text)) == text
    assert from_definition(tok.definition()).encode(text) == tok.encode(text)


def test_dtype_follows_vocabulary_size():
    assert token_dtype(65) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(100277) == np.uint32


def test_chunks_cover_the_range_exactly(tmp_path):
    text = make_corpus(400)
    path = tmp_path / "c.txt"
    path.write_text(text)
    start, stop = 123, len(text) - 77
    chunks = list(iter_chunks(path, start, stop, chunk_chars=500))
    assert len(chunks) > 5
    assert "".join(chunks) == text[start:stop]


def test_prepare_char_splits_90_10_by_characters(tmp_path, tiny_corpus):
    text = tiny_corpus.read_text()
    counts = prepare(tiny_corpus, tmp_path / "tok", tokenizer_config(kind="char"), chunk_chars=700)
    boundary = int(len(text) * 0.9)
    assert counts["train"]["chars"] == boundary
    assert counts["val"]["chars"] == len(text) - boundary
    definition = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    tok = from_definition(definition)
    train = load_tokens(tmp_path / "tok" / "train.bin", definition["dtype"])
    val = load_tokens(tmp_path / "tok" / "val.bin", definition["dtype"])
    assert tok.decode(train.tolist()) == text[:boundary]
    assert tok.decode(val.tolist()) == text[boundary:]
    assert counts["train"]["tokens"] == len(train)


@needs_tiktoken
def test_prepare_bpe_streams_to_the_same_tokens_as_a_whole_file_encoding(tmp_path):
    # Many blank lines and runs of spaces: the places where a careless cut changes tokens.
    text = make_corpus(600).replace("\n\n", "\n\n\n  \n") + "   end  \n\n"
    path = tmp_path / "c.txt"
    path.write_text(text)
    counts = prepare(path, tmp_path / "tok", tokenizer_config(kind="bpe"), chunk_chars=300)
    enc = BpeTokenizer("gpt2")
    boundary = int(len(text) * 0.9)
    train = load_tokens(tmp_path / "tok" / "train.bin", "uint16")
    assert train.tolist() == enc.encode(text[:boundary])
    assert counts["val"]["tokens"] == len(enc.encode(text[boundary:]))
    assert counts["train"]["chars_per_token"] > 1.5


@needs_tiktoken
def test_bpe_streaming_of_text_without_newlines_stays_exact(tmp_path):
    text = make_corpus(300).replace("\n", "  ")
    path = tmp_path / "c.txt"
    path.write_text(text)
    chunks = list(iter_chunks(path, 0, len(text), chunk_chars=200))
    assert max(map(len, chunks)) < 400  # memory stays bounded without newlines too
    enc = BpeTokenizer("gpt2")
    assert [t for c in chunks for t in enc.encode(c)] == enc.encode(text)
