"""The model as a Hugging Face folder: `transformers`' GPT2LMHeadModel and a tokenizer that
`AutoTokenizer.from_pretrained` loads offline.

GPT-Mini is GPT-2 layer for layer (learned positions, pre-LayerNorm blocks, `c_attn` /
`c_proj` / `c_fc`, a head tied to `wte`); only its activation is the exact GELU
(`activation_function: "gelu"`, where GPT-2 has the tanh approximation) and its linear
layers are `nn.Linear`, whose weights GPT-2's `Conv1D` stores transposed. A model without
biases (`bias: false`) gets zero biases, which compute the same.

The folder (`hf/` in the export):

- `config.json`, `generation_config.json`: the model's shape and dropouts; sampling as the
  CLI's defaults (temperature 0.8, no top-k or top-p);
- `model.safetensors`: the weights, the tied head once (as `transformer.wte.weight`);
- `tokenizer.json`, `tokenizer_config.json`: for a char model, one token per character of
  its vocabulary (a character outside it is an error, as in the project); for a tiktoken
  encoding, GPT-2's byte-level BPE rebuilt from tiktoken's ranks, without the network.

Every file is the same bytes for the same checkpoint (the transformers version is written
into the two configs, as `save_pretrained` does). transformers, tokenizers and safetensors
are imported inside the functions: nothing that uses the export with torch alone needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gptmini.export.layout import (
    HF_CONFIG_FILE,
    HF_GENERATION_CONFIG_FILE,
    HF_TOKENIZER_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    HF_WEIGHTS_FILE,
)
from gptmini.inference.generation import Sampling
from gptmini.model import GPT

ENDOFTEXT = "<|endoftext|>"


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The weights under GPT2LMHeadModel's names, contiguous float tensors in a fixed
    order: the Linear weights transposed into Conv1D's (in, out) layout, zeros for the
    biases of a model without them, and no `lm_head.weight` (tied to the embedding)."""
    def bias(module: torch.nn.Module, size: int) -> torch.Tensor:
        b = getattr(module, "bias", None)
        return torch.zeros(size, dtype=module.weight.dtype) if b is None else b

    def linear(prefix: str, layer: torch.nn.Linear) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": layer.weight.t(),
                f"{prefix}.bias": bias(layer, layer.out_features)}

    def norm(prefix: str, layer: torch.nn.LayerNorm) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": layer.weight,
                f"{prefix}.bias": bias(layer, layer.weight.numel())}

    state = {"transformer.wte.weight": model.wte.weight,
             "transformer.wpe.weight": model.wpe.weight}
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}"
        state.update(norm(f"{p}.ln_1", block.ln_1))
        state.update(linear(f"{p}.attn.c_attn", block.attn.c_attn))
        state.update(linear(f"{p}.attn.c_proj", block.attn.c_proj))
        state.update(norm(f"{p}.ln_2", block.ln_2))
        state.update(linear(f"{p}.mlp.c_fc", block.mlp.c_fc))
        state.update(linear(f"{p}.mlp.c_proj", block.mlp.c_proj))
    state.update(norm("transformer.ln_f", model.ln_f))
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}


def _special_ids(tokenizer: dict[str, Any]) -> dict[str, int | None]:
    """GPT-2's <|endoftext|> as bos and eos for a BPE vocabulary that has it; none for a
    char vocabulary (it has no such token)."""
    if tokenizer.get("kind") == "bpe":
        eot = _tiktoken(tokenizer)._special_tokens.get(ENDOFTEXT)
        return {"bos_token_id": eot, "eos_token_id": eot}
    return {"bos_token_id": None, "eos_token_id": None}


def hf_config(ckpt: dict[str, Any]) -> Any:
    """transformers.GPT2Config of the checkpoint's model configuration."""
    from transformers import GPT2Config

    cfg = ckpt["model_config"]
    return GPT2Config(
        vocab_size=ckpt["tokenizer"]["vocab_size"], n_positions=cfg["block_size"],
        n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
        activation_function="gelu",  # exact GELU (nn.GELU()), not GPT-2's gelu_new
        resid_pdrop=cfg["dropout"], embd_pdrop=cfg["dropout"],
        attn_pdrop=cfg.get("attn_dropout", cfg["dropout"]),  # as ModelConfig.saved
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"], dtype="float32",
        **_special_ids(ckpt["tokenizer"]))


def hf_generation_config(ckpt: dict[str, Any]) -> Any:
    """Sampling as the library's defaults (`Sampling`: temperature 0.8, top-k and top-p off).
    transformers' GPT-2 does not slide the window as the project's generation does: prompt
    and new tokens together must fit the context (`n_positions`)."""
    from transformers import GenerationConfig

    defaults = Sampling()
    return GenerationConfig(do_sample=True, temperature=defaults.temperature, top_k=0,
                            top_p=defaults.top_p, **_special_ids(ckpt["tokenizer"]))


# -- tokenizers -------------------------------------------------------------------------------

def _tiktoken(definition: dict[str, Any]) -> Any:
    import tiktoken

    return tiktoken.get_encoding(definition["encoding"])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (its vocab.json's alphabet):
    the printable Latin-1 bytes stand for themselves, the others for chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(chars.items()))


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges of a byte-level BPE from its ranks (tiktoken's mergeable_ranks), in rank
    order: the pair that makes each multi-byte token is what BPE with only the lower ranks
    leaves of its bytes."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while True:
            best: tuple[int, int] | None = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[1]):
                    best = (i, r)
            if best is None:
                break
            i = best[0]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two tokens")
        merges.append((parts[0], parts[1]))
    return merges


def char_tokenizer(definition: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` with one token per character of the vocabulary, ids as
    the project's: each character is its own piece (newlines and spaces too), and decoding
    joins them with nothing between."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(definition["vocab"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def bpe_tokenizer(definition: dict[str, Any]) -> Any:
    """GPT-2's byte-level BPE as a `tokenizers.Tokenizer`, from the tiktoken encoding's
    ranks (cached by tiktoken: no network with TIKTOKEN_CACHE_DIR set) and its special
    tokens (<|endoftext|>). Byte-level pre-tokenization with GPT-2's split pattern."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    enc = _tiktoken(definition)
    ranks: dict[bytes, int] = enc._mergeable_ranks
    alphabet = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = [(text(a), text(b)) for a, b in bpe_merges(ranks)]
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for name, token_id in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        if tok.token_to_id(name) != token_id:
            raise ValueError(f"special token {name!r} got id {tok.token_to_id(name)}, "
                             f"tiktoken has {token_id}")
    if tok.get_vocab_size() != definition["vocab_size"]:
        raise ValueError(f"the BPE tokenizer has {tok.get_vocab_size()} tokens, the "
                         f"definition {definition['vocab_size']}")
    return tok


def tokenizer_files(definition: dict[str, Any], block_size: int) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json (a PreTrainedTokenizerFast) by file name.
    No cleanup of spaces around punctuation on decoding: decode(encode(text)) is text."""
    bpe = definition.get("kind") == "bpe"
    tok = bpe_tokenizer(definition) if bpe else char_tokenizer(definition)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
    }
    if bpe:
        config.update(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT,
                      add_prefix_space=False)
    return {HF_TOKENIZER_FILE: tok.to_str(pretty=True) + "\n",
            HF_TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True) + "\n"}


# -- the folder -------------------------------------------------------------------------------

def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The safetensors file of `state`: its header lists the tensors sorted by name with
    fixed metadata (transformers wants `format: pt`), so the same weights give the same bytes."""
    from safetensors.torch import save

    return save(dict(sorted(state.items())), metadata={"format": "pt"})


def write_hf_folder(ckpt: dict[str, Any], model: GPT, out_dir: str | Path) -> Path:
    """Write the Hugging Face folder of the checkpoint (and its model) into `out_dir`, a
    new directory: the export writes it inside its own temporary directory, which becomes
    the export atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True)
    files = {
        HF_CONFIG_FILE: hf_config(ckpt).to_json_string(),
        HF_GENERATION_CONFIG_FILE: hf_generation_config(ckpt).to_json_string(),
        **tokenizer_files(ckpt["tokenizer"], ckpt["model_config"]["block_size"]),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    (out / HF_WEIGHTS_FILE).write_bytes(safetensors_bytes(hf_state_dict(model)))
    return out
