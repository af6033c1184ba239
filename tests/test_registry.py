"""The export in MLflow's registry (gptmini.export.registry) and as an MLflow Model
(gptmini.export.pyfunc), on a real SQLite tracking store and registry in a temporary
directory: logged from code, loaded and run in a fresh process with
`mlflow.pyfunc.load_model`, registered with the champion rule, loaded by the CLI and the app
through `models:/gptmini@champion`, and served by a real `mlflow models serve` process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from test_app import LOCAL_ONLY, free_port

from gptmini.export.pyfunc import PARAMS
from gptmini.export.registry import CHAMPION, REGISTERED_MODEL, publish, register
from gptmini.inference.generation import Sampling
from tiny_export import build_tiny_export, generated

pytestmark = pytest.mark.usefixtures("one_thread")
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny export published (logged, registered, champion) on a store of its own; the
    environment points at it for this module (and the subprocesses it starts)."""
    root = tmp_path_factory.mktemp("registry")
    tiny = build_tiny_export(root / "tiny")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", *LOCAL_ONLY)}
    os.environ.update({"MLFLOW_TRACKING_URI": uri, **LOCAL_ONLY})
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    record = json.loads((tiny.directory / "evaluation_metrics.json").read_text())
    with mlflow.start_run(experiment_id=experiment) as run:
        start = time.perf_counter()
        published = publish(tiny.directory, record)
        seconds = time.perf_counter() - start
    yield tiny, published, record, root, seconds, run.info.run_id
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def expected(tiny, prompt: str, n: int, seed: int, **kw) -> str:
    return generated(tiny.model, tiny.tokenizer, prompt,
                     Sampling(max_new_tokens=n, seed=seed, **kw))


def python(code: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_publish_registers_version_1_as_champion_quickly(store):
    tiny, published, record, root, seconds, _ = store
    assert published.version == "1" and published.promoted
    assert published.bpc == record["metrics"]["bpc"] == 1.5
    print(f"publish (log + register) took {seconds:.1f} s")
    assert seconds < 60  # a few seconds on an idle machine; bounded loosely for busy ones


def test_the_model_is_code_not_a_pickle_and_carries_its_signature(store):
    tiny, published, _, root, _, _ = store
    local = Path(mlflow.artifacts.download_artifacts(published.model_uri,
                                                     dst_path=str(root / "dl")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not any(name.endswith((".pkl", ".pickle")) for name in files), files
    assert "code/gptmini/inference/generation.py" in files  # the code it generates with
    assert not any("__pycache__" in name for name in files)
    assert "artifacts/export/model.ts" in files
    assert "serving_input_example.json" in files
    info = mlflow.models.get_model_info(published.model_uri)
    assert [s["name"] for s in info.signature.inputs.to_dict()] == ["prompt"]
    assert {p.name: p.default for p in info.signature.params} == {
        name: default for name, (_, default) in PARAMS.items()}
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements


def test_a_fresh_process_loads_and_predicts_with_the_models_own_code(store):
    tiny, published, _, root, _, _ = store
    out = python(f"""
import json, mlflow, pandas as pd
model = mlflow.pyfunc.load_model({CHAMPION_URI!r})
texts = model.predict(pd.DataFrame({{"prompt": ["ROMEO:", "JULIET:"]}}),
                      params={{"max_new_tokens": 40, "seed": 3, "top_k": 5, "stop": "ee"}})
import gptmini.inference.generation as g
print(json.dumps({{"texts": list(texts), "code": g.__file__}}))
""", root)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["texts"] == [expected(tiny, p, 40, 3, top_k=5, stop="ee")
                               for p in ("ROMEO:", "JULIET:")]
    assert all(len(t) > 0 for t in result["texts"])
    # The generation code came from the model's own copy (code_paths), not the checkout.
    assert "/code/gptmini/inference/generation.py" in result["code"]
    assert not result["code"].startswith(str(Path(__file__).parents[1] / "src"))


def test_bad_sampling_params_are_a_clear_invalid_parameter_error(store):
    tiny, published, _, root, _, _ = store
    model = mlflow.pyfunc.load_model(published.model_uri)
    prompts = {"prompt": ["ROMEO:"]}
    assert model.predict(prompts, params={"max_new_tokens": 10, "seed": 1}) == [
        expected(tiny, "ROMEO:", 10, 1)]
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"top-p = 1.5: must be in"):
        model.predict(prompts, params={"top_p": 1.5})
    with pytest.raises(mlflow.exceptions.MlflowException, match="must be at most 2000"):
        model.predict(prompts, params={"max_new_tokens": 10**6})
    for params, said in (({"temperature": float("nan")}, "temperature = nan"),
                         ({"temperature": -1.0}, "temperature = -1.0"),
                         ({"top_k": 0}, "top-k = 0")):
        with pytest.raises(mlflow.exceptions.MlflowException, match=said):
            model.predict(prompts, params=params)
    for prompt, said in (("x" * 100_001, "at most 100,000"), ("h\u00e9", r"U\+00E9")):
        with pytest.raises(mlflow.exceptions.MlflowException, match=said):
            model.predict({"prompt": [prompt]}, params={"max_new_tokens": 5})
    assert model.predict({"prompt": [""]}, params={"max_new_tokens": 5, "seed": 1})


def test_champion_moves_only_to_a_version_with_a_lower_bpc(store):
    tiny, published, record, _, _, _ = store
    client = mlflow.MlflowClient()

    def with_bpc(bpc):
        return {**record, "metrics": {**record["metrics"], "bpc": bpc}}

    worse = register(published.model_uri, with_bpc(1.7))
    same = register(published.model_uri, with_bpc(1.5))
    assert not worse.promoted and not same.promoted and same.champion_bpc == 1.5
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version in ("1", 1)
    better = register(published.model_uri, with_bpc(1.25))
    assert better.promoted and better.champion_bpc == 1.5
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert str(champion.version) == better.version == "4"
    assert champion.tags["val_bpc"] == "1.25"
    assert "champion unchanged" in worse.summary() and "now @champion" in better.summary()


@pytest.mark.slow  # three CLI processes load the registered model: half a minute
def test_cli_generates_and_describes_from_the_champion(store):
    tiny, _, _, root, _, run_id = store

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "gptmini.cli", *args], cwd=root,
                              text=True, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    generate = ("generate", "ROMEO:", "-n", "60", "--seed", "11", "-q", "--no-echo")
    from_registry = cli(*generate, "--model", CHAMPION_URI)
    assert from_registry == cli(*generate, "--export-dir", str(tiny.directory))
    assert from_registry == expected(tiny, "ROMEO:", 60, 11) + "\n"
    assert json.loads(cli("info", "--json", "--model", CHAMPION_URI))["metrics"]["bpc"] == 1.5
    # The other ways to name it: a version, the run's model.
    from gptmini.inference.loading import load_model

    weights = json.loads((tiny.directory / "evaluation_metrics.json").read_text())["model"][
        "weights_sha256"]
    for uri in (f"models:/{REGISTERED_MODEL}/1", f"runs:/{run_id}/model"):
        assert load_model(uri).record["model"]["weights_sha256"] == weights, uri
    bad = subprocess.run([sys.executable, "-m", "gptmini.cli", "info", "--model",
                          "models:/no-such-model@champion"], cwd=root, text=True,
                         capture_output=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot load models:/no-such")
    assert len(bad.stderr.strip().splitlines()) == 1


def _start(cmd: list[str], log: Path, cwd: Path, ready: str, timeout: float = 180):
    """Start a server, wait (bounded) until `ready` answers 200, return the process."""
    # `mlflow models serve` runs `uvicorn` by name: the venv's scripts on PATH, as in an
    # activated venv (the README's test command runs .venv/bin/python without activating)
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(ready, timeout=5) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"{cmd[:4]} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group, started above)."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@contextlib.contextmanager
def served(model_uri: str, root: Path, name: str):
    """`mlflow models serve` of model_uri on a free port, stopped afterwards; yields a
    function that posts a request body to /invocations and returns the decoded answer."""
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    process = _start([mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager",
                      "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                     root / f"{name}.log", root, f"http://127.0.0.1:{port}/ping")

    def invoke(body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    try:
        yield invoke
    finally:
        _stop(process)
    assert process.poll() is not None


@pytest.mark.slow
def test_registrys_serve_answers_invocations(store):
    tiny, _, _, root, _, _ = store
    with served(CHAMPION_URI, root, "serve") as invoke:
        answer = invoke({"dataframe_split": {"columns": ["prompt"], "data": [["ROMEO:"]]},
                         "params": {"max_new_tokens": 50, "seed": 9, "temperature": 0.7}})
        assert answer == {"predictions": [expected(tiny, "ROMEO:", 50, 9, temperature=0.7)]}
        assert invoke({"inputs": {"prompt": ["JULIET:"]}, "params": {"seed": 2}}) == {
            "predictions": [expected(tiny, "JULIET:", Sampling().max_new_tokens, 2)]}
        with pytest.raises(urllib.error.HTTPError) as error:
            invoke({"inputs": {"prompt": ["x"]}, "params": {"temperature": -1.0}})
        assert error.value.code == 400
        assert "temperature = -1.0: must be a number, 0 or more" in error.value.read().decode()


def test_the_hugging_face_folder_is_logged_as_a_transformers_model(store):
    """hf/ beside the project's model, in the same run: a fresh process loads it with
    MLflow's transformers flavor, never importing gptmini. The pipeline's greedy
    continuation is the project's; the pyfunc's is that text stripped of white space at
    its ends (MLflow strips every text-generation output)."""
    tiny, published, _, root, _, run_id = store
    assert published.hf_model_uri is not None
    assert published.hf_model_uri in published.summary()
    logged = mlflow.get_logged_model(published.hf_model_uri.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.name == "hf"
    # Its params' defaults: generation_config.json's sampling, the library's new tokens.
    info = mlflow.models.get_model_info(published.hf_model_uri)
    assert {p.name: p.default for p in info.signature.params} == {
        "max_new_tokens": Sampling().max_new_tokens, "do_sample": True, "temperature": 0.8,
        "top_k": 0, "top_p": 1.0}
    prompts = ["ROMEO:", "JULIET:"]
    out = python(f"""
import json, sys, mlflow
pipe = mlflow.transformers.load_model({published.hf_model_uri!r})
native = [out[0]["generated_text"] for out in pipe({prompts!r}, max_new_tokens=12,
                                                   do_sample=False, return_full_text=False)]
model = mlflow.pyfunc.load_model({published.hf_model_uri!r})
texts = model.predict({prompts!r}, params={{"max_new_tokens": 12, "do_sample": False}})
print(json.dumps({{"pipeline": type(pipe).__name__, "native": native, "pyfunc": list(texts),
                   "gptmini": any(m.startswith("gptmini") for m in sys.modules)}}))
""", root)
    result = json.loads(out.strip().splitlines()[-1])
    greedy = [expected(tiny, p, 12, 0, temperature=0.0) for p in prompts]
    assert any(text != text.strip() for text in greedy)  # the stripping is seen
    assert result == {"pipeline": "TextGenerationPipeline", "gptmini": False,
                      "native": greedy, "pyfunc": [text.strip() for text in greedy]}


@pytest.mark.slow
def test_registrys_serve_serves_the_hugging_face_model(store):
    tiny, published, _, root, _, _ = store
    with served(published.hf_model_uri, root, "serve-hf") as invoke:
        answer = invoke({"inputs": ["ROMEO:"],
                         "params": {"max_new_tokens": 15, "do_sample": False}})
    greedy = expected(tiny, "ROMEO:", 15, 0, temperature=0.0)
    assert answer == {"predictions": [greedy.strip()]}


@pytest.mark.app
@pytest.mark.slow
def test_the_app_serves_the_champion(store):
    from gradio_client import Client

    tiny, _, _, root, _, _ = store
    port = free_port()
    process = _start([sys.executable, "-m", "gptmini.cli", "app", "--model",
                      CHAMPION_URI, "--port", str(port)], root / "app.log", root,
                     f"http://127.0.0.1:{port}/")
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False, analytics_enabled=False,
                        download_files=False)
        text, _ = client.predict("ROMEO:", 0.9, 7, 0.95, 80, 5, api_name="/generate")
        assert text == "ROMEO:" + expected(tiny, "ROMEO:", 80, 5, temperature=0.9, top_k=7,
                                           top_p=0.95)
    finally:
        _stop(process)
