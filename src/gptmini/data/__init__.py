"""Data: the corpus download, the tokenizers, the token files, checks on user text."""
