"""The export as an MLflow Model: a pyfunc logged through MLflow's "models from code" route,
so nothing of this project is pickled. Text in (a `prompt` column: a DataFrame, or
`{"prompt": [...]}`), text out (the generated continuation of each prompt, the prompt not
repeated).

The sampling params (`max_new_tokens`, `temperature`, `top_k`, `top_p`, `seed`, `stop`) are
checked by `Sampling.from_user`, the same check as the CLI's and the app's; a value out of
range is MLflow's INVALID_PARAMETER_VALUE (HTTP 400 from `mlflow models serve`), naming
the setting and what it allows. `top_k`, `seed` and `stop` left out (null) are off, a
random seed and no stop string.

MLflow runs this file to load the model (`set_model` at the end). The code it imports is
the copy of the `gptmini` package logged with the model (`code_paths`, see
`gptmini.export.registry`): a model generates with the code it was logged with, whatever
version of GPT-Mini is installed where it is loaded, if any.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from gptmini.inference.generation import MAX_NEW_TOKENS, Sampling

PROMPT_COLUMN = "prompt"
_DEFAULT = Sampling()
# name -> (MLflow type, default); None: off (top_k, stop) or a random seed (seed)
PARAMS: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("long", _DEFAULT.max_new_tokens),
    "temperature": ("double", _DEFAULT.temperature),
    "top_k": ("long", _DEFAULT.top_k),
    "top_p": ("double", _DEFAULT.top_p),
    "seed": ("long", _DEFAULT.seed),
    "stop": ("string", _DEFAULT.stop),
}
EXAMPLE_PROMPT = "ROMEO:"
EXAMPLE_PARAMS = {"max_new_tokens": 20, "temperature": 0.8, "seed": 1337}


def signature() -> Any:
    """A `prompt` string column in, a string out, and the sampling params with defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", PROMPT_COLUMN)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(name, kind, default)
                            for name, (kind, default) in PARAMS.items()]))


def input_example() -> tuple[Any, dict[str, Any]]:
    """One prompt and a short, seeded generation (MLflow runs it when the model is logged)."""
    import pandas as pd

    return pd.DataFrame({PROMPT_COLUMN: [EXAMPLE_PROMPT]}), dict(EXAMPLE_PARAMS)


def prompts_of(model_input: Any) -> list[str]:
    """The prompts of a request: a DataFrame's `prompt` column (else its only column), a
    list of strings, or one string (the last two where MLflow's schema check is bypassed)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if PROMPT_COLUMN in model_input.columns:
            column = model_input[PROMPT_COLUMN]
        elif len(model_input.columns) == 1:
            column = model_input.iloc[:, 0]
        else:
            raise _invalid(f"the input has columns {list(model_input.columns)}: give one "
                           f"column named {PROMPT_COLUMN!r}")
        values = column.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, dict) and PROMPT_COLUMN in model_input:
        values = _as_list(model_input[PROMPT_COLUMN])
    else:
        values = _as_list(model_input)
    # In process, MLflow turns {"prompt": ["a", "b"]} into one row that holds the list.
    values = [v for value in values
              for v in (_as_list(value) if not isinstance(value, str) else [value])]
    if not all(isinstance(v, str) for v in values):
        raise _invalid("every prompt must be a string")
    return values


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise _invalid(f"cannot read prompts from a {type(value).__name__}") from None


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


class GPTMiniModel(PythonModel):
    """Loads the export and generates with its fastest engine (gptmini.inference.engines)."""

    def load_context(self, context) -> None:
        from gptmini.export.layout import MLFLOW_ARTIFACT
        from gptmini.inference.loading import load_export

        self.exported = load_export(context.artifacts[MLFLOW_ARTIFACT])

    # No type hints here: MLflow would read them as the input schema, which the signature
    # (logged with the model) already gives.
    def predict(self, context, model_input, params=None):
        import torch

        from gptmini.data.text import InputError
        from gptmini.inference.generation import generate_text

        given = {name: default for name, (_, default) in PARAMS.items()}
        given.update({k: v for k, v in (params or {}).items() if k in PARAMS})
        values = {"length": given.pop("max_new_tokens"), **given}
        try:  # every prompt checked before any is generated
            started = [generate_text(self.exported, text, max_tokens=MAX_NEW_TOKENS,
                                     **values) for text in prompts_of(model_input)]
        except InputError as exc:
            raise _invalid(str(exc)) from None
        # One torch thread, as the CLI and the app: decoding one token is too small a job to
        # split, and split on busy cores it mostly waits (the caller's setting is restored).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return ["".join(generation.pieces) for generation in started]
        finally:
            torch.set_num_threads(threads)


# The "models from code" entry point: MLflow runs this file under a name of its own and
# takes the model set here. Imported as part of the package, it sets nothing.
if not __name__.startswith("gptmini."):
    mlflow.models.set_model(GPTMiniModel())
