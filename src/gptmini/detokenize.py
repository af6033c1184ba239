"""Token ids to text one token at a time, for streaming and per-token views.

A BPE token is a run of bytes that can end inside a multi-byte UTF-8 character; its text
then comes out with the token that completes the character. Joined, the pieces are
exactly ``tokenizer.decode(ids)`` (for valid UTF-8).
"""

from __future__ import annotations

import codecs

from gptmini.tokenizer import BpeTokenizer, Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def piece(self, token: int) -> str:
        """The text that `token` completes (possibly empty)."""
        if isinstance(self.tokenizer, BpeTokenizer):
            return self._utf8.decode(self.tokenizer.enc.decode_single_token_bytes(token))
        return self.tokenizer.decode([token])

    def flush(self) -> str:
        """What is left of an unfinished character at the end (a replacement character)."""
        return self._utf8.decode(b"", final=True)
