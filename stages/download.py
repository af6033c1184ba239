"""Stage download: fetch Tiny Shakespeare (or take it from GPTMINI_DATA_MIRROR) and verify
its sha256."""

from gptmini.core.stage import run
from gptmini.data.download import fetch_corpus

if __name__ == "__main__":
    run(fetch_corpus)
