"""GPT-Mini: a decoder-only Transformer language model.

Learned token and position embeddings, a stack of pre-LayerNorm blocks (causal
self-attention, then a GELU MLP of 4x width, each with a residual connection), a
final LayerNorm and an output head tied to the token embedding. The module is
TorchScript-compatible, so the export can be loaded with torch alone.

Generation runs incrementally with a key/value cache: `prefill` reads the prompt once,
`extend` feeds one new token at a time and only computes its own keys and values, and
`sample` draws the next token (temperature, top-k, top-p, a seeded torch.Generator).
`generate` is the loop over those three; it is a TorchScript method of the export, so
eager and scripted models run the same code and draw the same tokens for the same seed.

Training calls `model(idx, targets)`, which returns the loss instead of the logits: through
the module's own `forward`, so DistributedDataParallel sees it, and for a large vocabulary
through the chunked head of `gptmini.head`, which never makes the (B, T, V) logits.
`hidden` gives the final hidden states, which the evaluation scores the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptmini.core.config import ModelConfig
from gptmini.head import CHUNK, head_loss, uses_chunked_head


class Dropout(nn.Module):
    """nn.Dropout with a cheaper mask: 16 random bits an element, three elements to an int64
    draw (its low 48 bits), instead of one generator call an element, because drawing the
    mask was a noticeable part of a CPU training step (docs/speed.md). Drops with probability
    round(p * 65536) / 65536 (0.1 -> 0.100006) and scales the kept values to keep the mean."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536) - 32768  # keep where the signed 16 bits >= this
        self.scale = 1.0 / (1.0 - round(p * 65536) / 65536) if p < 1.0 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_()
        bits = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n]
        mask = (bits >= self.threshold).to(x.dtype).mul_(self.scale)
        return x * mask.view(x.shape)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.attn_dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v of x (B, T, C), each as (B, n_head, T, head_size)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        return [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, n_head, T, head_size) -> (B, T, C), then the output projection."""
        B, _, T, _ = y.size()
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_embd)
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return self._merge(y)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights of x (B, T, C): (B, n_head, T, T), row i the distribution
        position i spreads over positions 0..i. For inspection only: `forward` gets the same
        mixture from scaled_dot_product_attention without making this matrix."""
        q, k, _ = self._heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        T = x.size(1)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)

    def forward_cached(self, x: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
        """Attention for x (B, T, C) at positions start..start+T-1. Its keys and values are
        written into `cache` (2, B, n_head, block_size, head_size), which holds those of
        the positions before `start`."""
        q, k, v = self._heads(x)
        end = start + x.size(1)
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        # A prefill (start 0) is causal within itself; a single new token may see every
        # cached position, so it needs no mask. (bool(): in a torch.export program `start`
        # may be symbolic.)
        y = F.scaled_dot_product_attention(q, cache[0, :, :, :end], cache[1, :, :, :end],
                                           is_causal=bool(start == 0))
        return self._merge(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


def window_keep(block_size: int) -> int:
    """The tokens generation keeps when its context is full: the last 3/4 of the window, so
    that one prefill buys a quarter of a window of single-token steps."""
    return max(1, 3 * block_size // 4)


class GPT(nn.Module):
    """`cfg` is the `model` section of params.yaml; the vocabulary size comes from the
    tokenizer. The checkpoint stores both and rebuilds the model from them."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.n_layer = cfg.n_layer
        self.n_head = cfg.n_head
        self.head_size = cfg.n_embd // cfg.n_head
        self.window_keep = window_keep(cfg.block_size)
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.uses_chunked_head = uses_chunked_head(vocab_size)
        self.head_chunk = CHUNK  # positions per chunk of the chunked head

        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Each parameter counted once (the tied head shares the token embedding)."""
        return sum(p.numel() for p in self.parameters())

    @torch.jit.export
    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) with T <= block_size → the final hidden states (B, T, n_embd),
        after the last LayerNorm: the head's input."""
        t = idx.size(1)
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than the context of "
                             f"{self.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) with T <= block_size → next-token logits (B, T, vocab_size); with
        targets (B, T), the mean cross-entropy against them instead (`next_token_loss`),
        for a vocabulary above `gptmini.head.PLAIN_HEAD_MAX_VOCAB` without the logits."""
        x = self.hidden(idx)
        if targets is None:
            return self.lm_head(x)
        if self.uses_chunked_head and not torch.jit.is_scripting():
            return self._chunked_loss(x, targets)
        return next_token_loss(self.lm_head(x), targets)

    @torch.jit.unused
    def _chunked_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return head_loss(x, self.lm_head.weight, targets, self.head_chunk)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inspection (not part of the export): the logits (B, T, V) of idx (B, T) and the
        attention weights of every layer and head (n_layer, B, n_head, T, T)."""
        maps = []
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device)))
        for block in self.blocks:
            maps.append(block.attn.weights(block.ln_1(x)))
            x = block(x)
        return self.lm_head(self.ln_f(x)), torch.stack(maps)

    # -- generation with a key/value cache ------------------------------------------------

    @torch.jit.export
    def new_cache(self, batch_size: int) -> torch.Tensor:
        """An empty key/value cache: (n_layer, 2, B, n_head, block_size, head_size)."""
        return torch.zeros(self.n_layer, 2, batch_size, self.n_head, self.block_size,
                           self.head_size, dtype=self.wte.weight.dtype,
                           device=self.wte.weight.device)

    @torch.jit.export
    def forward_cached(self, idx: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
        """Next-token logits (B, vocab_size) after idx (B, T), whose tokens sit at positions
        start..start+T-1; the cache holds the keys and values of the positions before and
        receives those of idx. Either a prefill (start 0) or one token (T 1)."""
        t = idx.size(1)
        if start + t > self.block_size:
            raise ValueError(f"positions up to {start + t} do not fit the context of "
                             f"{self.block_size}")
        if start > 0 and t != 1:
            raise ValueError("after the prefill, feed one token at a time")
        pos = torch.arange(start, start + t, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block.forward_cached(x, cache[i], start)
        return self.lm_head(self.ln_f(x[:, -1]))

    @torch.jit.export
    def prefill(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start generating after idx (B, T): its last block_size tokens go through the
        model once. Returns the next-token logits, the cache and the window of ids it holds."""
        if idx.size(1) == 0:
            raise ValueError("generation needs at least one token to start from")
        window = idx[:, -self.block_size:]
        cache = self.new_cache(idx.size(0))
        return self.forward_cached(window, cache, 0), cache, window

    @torch.jit.export
    def extend(self, window: torch.Tensor, cache: torch.Tensor, next_id: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed next_id (B, 1): returns the logits after it and the new window.

        While the window is shorter than the context, only the new token is computed. When
        it is full, it slides: the last `window_keep` tokens are prefilled again at
        positions 0.. (learned absolute positions cannot be shifted inside the cache), so
        the model always sees between window_keep and block_size tokens."""
        pos = window.size(1)
        window = torch.cat([window, next_id], dim=1)
        if pos < self.block_size:
            return self.forward_cached(next_id, cache, pos), window
        window = window[:, -self.window_keep:]
        return self.forward_cached(window, cache, 0), window

    @torch.jit.export
    def sample(self, logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
        """Next ids (B, 1) from logits (B, V): `sample_next`."""
        return sample_next(logits, temperature, top_k, top_p, generator)

    @torch.jit.export
    def new_generator(self, seed: int) -> torch.Generator | None:
        """`seeded_generator` on the model's device."""
        return seeded_generator(seed, self.wte.weight.device)

    @torch.jit.export
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = -1) -> torch.Tensor:
        """max_new_tokens ids (B, max_new_tokens) sampled after the prompt ids idx (B, T)."""
        generator = self.new_generator(seed)
        new_ids: list[torch.Tensor] = [idx[:, :0]]
        with torch.no_grad():  # callers of the export need not remember it
            logits, cache, window = self.prefill(idx)
            for i in range(max_new_tokens):
                next_id = self.sample(logits, temperature, top_k, top_p, generator)
                new_ids.append(next_id)
                if i + 1 < max_new_tokens:
                    logits, window = self.extend(window, cache, next_id)
        return torch.cat(new_ids, dim=1)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of logits (B, T, V) against targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next ids (B, 1) from logits (B, V). temperature 0 is greedy; top_k 0 and top_p 1
    switch those filters off."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    # In float64 and shifted so the largest is 0: any temperature > 0 (a float64) then
    # divides without overflowing into inf - inf or rounding to 0.
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Nucleus: keep the most likely tokens until their mass reaches top_p.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the first token always stays
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def seeded_generator(seed: int, device: torch.device) -> torch.Generator | None:
    """A torch.Generator seeded with `seed` on `device`; None (torch's global generator)
    for a negative seed."""
    if seed < 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
