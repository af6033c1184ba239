"""Generation speed, in one run: characters per second for 1000 generated characters
without the key/value cache (the window recomputed for every token), with it in eager
PyTorch, and with it in TorchScript (what the export's `generate` runs).

All three use the same seed and window policy, and must produce the same tokens; the
script checks that before printing the ratios.

    python benchmarks/generate_speed.py                  # data/export: model.ts as exported
    python benchmarks/generate_speed.py --checkpoint data/model/ckpt.pt --threads 2
    python benchmarks/generate_speed.py --random-init    # params.yaml's model, random weights

With an export, the TorchScript row runs the exported model.ts itself and the eager rows a
GPT rebuilt from its weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptmini.core.config import ModelConfig, load_params
from gptmini.data.tokenizers import CharTokenizer, from_definition
from gptmini.model import GPT
from gptmini.serving.export import load_export
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint


def recompute_generate(model: GPT, idx: torch.Tensor, n: int, temperature: float,
                       seed: int) -> torch.Tensor:
    """No cache: the whole window through the forward pass for every new token, with the
    same window policy as `GPT.generate` (past the context, keep the last window_keep)."""
    generator = model.new_generator(seed)
    window, out = idx[:, -model.block_size:], []
    for _ in range(n):
        next_id = model.sample(model(window)[:, -1], temperature, 0, 1.0, generator)
        out.append(next_id)
        window = torch.cat([window, next_id], dim=1)
        if window.size(1) > model.block_size:
            window = window[:, -model.window_keep:]
    return torch.cat(out, dim=1)


def best_time(run: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", type=Path, default=Path("data/export"))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="time this checkpoint instead (TorchScript: torch.jit.script)")
    parser.add_argument("--random-init", action="store_true",
                        help="time a randomly initialised GPT-Mini instead of a checkpoint")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="with --random-init: the model section to build (default "
                             "params.yaml)")
    parser.add_argument("--chars", type=int, default=1000, help="tokens to generate")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each; best counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the app and CLI use)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.random_init:
        torch.manual_seed(0)
        tokenizer = CharTokenizer("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "abcdefghijklmnopqrstuvwxyz")
        config = load_params(args.params).model
        model, source = GPT(config, tokenizer.vocab_size).eval(), f"random init, {args.params}"
        scripted = torch.jit.script(model)
    elif args.checkpoint is not None:
        ckpt = load_checkpoint(args.checkpoint)
        model, tokenizer = model_from_checkpoint(ckpt), from_definition(ckpt["tokenizer"])
        scripted, source = torch.jit.script(model), str(args.checkpoint)
    else:
        exported = load_export(args.export_dir)  # ExportError: one line, below
        config = dict(exported.record["model"]["config"])
        vocab_size = config.pop("vocab_size", exported.tokenizer.vocab_size)
        model = GPT(ModelConfig(**config), vocab_size)
        model.load_state_dict(exported.model.state_dict())
        model, scripted, tokenizer = model.eval(), exported.model, exported.tokenizer
        source = f"{args.export_dir}/model.ts"
    idx = torch.tensor([tokenizer.encode(args.prompt)])
    n, temp, seed = args.chars, args.temperature, args.seed

    runs = {
        "without cache (window recomputed)": lambda: recompute_generate(model, idx, n, temp,
                                                                       seed),
        "KV cache, eager": lambda: model.generate(idx, n, temp, 0, 1.0, seed),
        "KV cache, TorchScript": lambda: scripted.generate(idx, n, temp, 0, 1.0, seed),
    }
    seconds, tokens = {}, {}
    with torch.inference_mode():
        for _ in range(2):  # warm-up: TorchScript optimises a method after its first runs
            scripted.generate(idx, 50, temp, 0, 1.0, seed)
            model.generate(idx, 50, temp, 0, 1.0, seed)
        for name, run in runs.items():
            seconds[name], tokens[name] = best_time(run, args.repeats)
    reference = tokens["without cache (window recomputed)"]
    if not all(torch.equal(t, reference) for t in tokens.values()):
        print("error: the three ways produced different tokens", file=sys.stderr)
        return 1
    n_chars = len(tokenizer.decode(reference[0].tolist()))
    speed = {name: n_chars / s for name, s in seconds.items()}

    print(f"GPT-Mini generation: {n_chars} characters after {args.prompt!r} "
          f"({source}, {model.num_parameters():,} parameters, context {model.block_size})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of "
          f"{args.repeats}, temperature {temp}, seed {seed}; the same tokens all three ways")
    for name, value in speed.items():
        print(f"  {name:<36}{value:>10,.0f} chars/s   ({seconds[name]:.3f} s)")
    cache_ratio = speed["KV cache, eager"] / speed["without cache (window recomputed)"]
    script_ratio = speed["KV cache, TorchScript"] / speed["KV cache, eager"]
    print(f"KV cache vs without: {cache_ratio:.1f}x  (goal >= 5x)")
    print(f"TorchScript vs eager (both cached): {script_ratio:.2f}x  (goal >= 0.90x)")
    return 0


if __name__ == "__main__":
    from gptmini.core.config import ConfigError
    from gptmini.serving.export import ExportError

    try:
        sys.exit(main())
    except (ConfigError, ExportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
