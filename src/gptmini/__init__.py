"""GPT-Mini: a small, reproducible GPT trained on Tiny Shakespeare."""

from gptmini.config import ConfigError, Params, load_params
from gptmini.model import GPT, GPTConfig
from gptmini.tokenizer import BpeTokenizer, CharTokenizer, from_definition

__all__ = ["GPT", "BpeTokenizer", "CharTokenizer", "ConfigError", "GPTConfig", "Params",
           "from_definition", "load_params"]
__version__ = "0.1.0"
