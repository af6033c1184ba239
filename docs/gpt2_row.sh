#!/usr/bin/env bash
# The README's gpt2 BPE row, regenerated: the recipe of params.yaml with only
# tokenizer.kind=bpe (GPT-2's encoding), run as a DVC experiment in a temporary workspace
# (this workspace is left as it is), its metric files copied to metrics/gpt2/.
# Needs the quick start's exports (GPTMINI_DATA_MIRROR, TIKTOKEN_CACHE_DIR).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
name=gpt2-row
dvc exp remove "$name" >/dev/null 2>&1 || true
dvc exp run --temp -n "$name" -S tokenizer.kind=bpe
ref=$(git for-each-ref --format='%(refname)' 'refs/exps/' | grep "/$name\$" | head -n 1)
mkdir -p metrics/gpt2
for file in evaluate.json train.json; do
  git show "$ref:metrics/$file" > "metrics/gpt2/$file"
done
echo "metrics/gpt2/: $(git show "$ref:params.yaml" | grep -c 'kind: bpe') bpe recipe from $ref"
