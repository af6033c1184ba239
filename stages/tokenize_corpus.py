"""Stage tokenize: split the corpus 90/10 by characters and write the token files.

(Named so that it does not shadow the standard library's `tokenize`.)"""

from gptmini.core.stage import run
from gptmini.data.tokens import tokenize

if __name__ == "__main__":
    run(tokenize)
