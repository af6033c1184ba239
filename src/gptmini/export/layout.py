"""Every file of an export directory, named once: the writer (`gptmini.export.writer`) writes
these names, the loader (`gptmini.inference.loading`), the engines and `gptmini info` read
them."""

from __future__ import annotations

MODEL_FILE = "model.ts"                  # TorchScript: forward and KV-cache generate
PROGRAM_FILE = "model.pt2"               # torch.export program of the forward pass
PREFILL_FILE = "prefill.pt2"             # torch.export generation step: prompt -> cache
DECODE_FILE = "decode.pt2"               # torch.export generation step: one token
STEP_ONNX = "step.onnx"                  # both steps as one ONNX graph (ONNX Runtime)
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "evaluation_metrics.json"
TRAIN_LOG_FILE = "train_log.csv"
EVAL_LOG_FILE = "eval_log.csv"
README_FILE = "README.md"
HF_DIR = "hf"                            # the Hugging Face folder (gptmini.export.hf)
MLFLOW_ARTIFACT = "export"  # the export's folder in the pipeline's run and in its MLflow Model

# The Hugging Face folder's files: the names transformers looks for.
HF_CONFIG_FILE = "config.json"
HF_GENERATION_CONFIG_FILE = "generation_config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# What each top-level file holds, in the order `gptmini info` lists them.
FILES = {
    MODEL_FILE: "TorchScript: forward(ids) -> logits, generate(ids, ...) with a KV cache",
    PROGRAM_FILE: "torch.export program of forward (dynamic batch and sequence length)",
    PREFILL_FILE: "torch.export program: prompt -> logits, KV cache (generation)",
    DECODE_FILE: "torch.export program: one token, KV cache -> logits, KV cache",
    STEP_ONNX: "ONNX graph (ONNX Runtime): tokens after a KV cache -> logits, cache",
    TOKENIZER_FILE: "tokenizer definition",
    METRICS_FILE: "validation metrics, model configuration, weights sha256",
    TRAIN_LOG_FILE: "training loss by step",
    EVAL_LOG_FILE: "train/validation loss estimates by step",
    README_FILE: "how to use it with torch alone",
}
HF_DESCRIPTION = "Hugging Face transformers: GPT2LMHeadModel (safetensors) and its tokenizer"
