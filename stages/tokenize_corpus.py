"""Stage tokenize: split the corpus 90/10 by characters and write the token files."""

from gptmini import paths
from gptmini.atomic import write_json
from gptmini.config import Params
from gptmini.stage import run
from gptmini.tokens import prepare


def main(params: Params) -> None:
    counts = prepare(paths.CORPUS, paths.TOKENS_DIR, params.tokenizer)
    write_json(paths.TOKENIZE_METRICS, counts)
    print(f"{params.tokenizer.kind}: vocabulary {counts['vocab_size']}, "
          f"train {counts['train']['tokens']:,} tokens, val {counts['val']['tokens']:,} tokens")


if __name__ == "__main__":
    run(main)
