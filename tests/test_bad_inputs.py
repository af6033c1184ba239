"""The bad-input sweep of `gptmini generate`, in a real process: each bad prompt, sampling
value or damaged export file is one line on stderr and exit 2, with nothing on stdout and
no traceback (docs/guarantees.md#bad-inputs, the table of what each gets). The app and the
pyfunc run the same checks (tests/test_app.py, tests/test_registry.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_export import build_tiny_export


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("bad-inputs"))


def generate(export: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gptmini.cli", "generate", *args,
                           "-n", "5", "--seed", "1", "-q", "--threads", "1",
                           "--export-dir", str(export)],
                          input=stdin, capture_output=True, timeout=300, env=env)


def assert_one_line(proc: subprocess.CompletedProcess, *said: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert proc.stdout == b"" and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for words in said:
        assert words in err, err


@pytest.mark.parametrize("args,stdin,said", [
    (["-"], b"ROMEO:\xff\xfe", ["not UTF-8", "0xff at offset 6"]),
    (["h\u00e9llo \u20ac"], None, ["outside the model's vocabulary", "U+00E9", "U+20AC"]),
    (["ROMEO:", "-t", "-1"], None, ["temperature = -1.0"]),
    (["ROMEO:", "-t", "nan"], None, ["temperature = nan"]),
    (["ROMEO:", "--top-k", "0"], None, ["top-k = 0"]),
    (["-"], b"a" * 100_001, ["100,001 characters", "at most 100,000"]),
], ids=["non-utf8", "out-of-vocab", "temperature-negative", "temperature-nan", "top-k-0",
        "over-100k-chars"])
def test_a_bad_prompt_or_value_is_one_line(tiny, args, stdin, said):
    assert_one_line(generate(tiny.directory, *args, stdin=stdin), *said)


def test_an_empty_or_long_prompt_generates_with_a_note(tiny):
    empty = generate(tiny.directory, "")
    assert empty.returncode == 0 and b"the prompt is empty" in empty.stderr
    long = generate(tiny.directory, "-", stdin=b"thou " * 20_000)  # 100 kB
    assert long.returncode == 0 and b"the model sees only the last" in long.stderr
    assert long.stdout.startswith(b"thou ")


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
        return
    # bytes flipped in the middle of the largest tensor: the file still parses
    start, size = _largest_tensor(path)
    for i in range(start + size // 4, start + size // 4 + min(256, size // 2)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _largest_tensor(path: Path) -> tuple[int, int]:
    """(offset, length) of the largest tensor's bytes in a torch zip archive or an ONNX
    file."""
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        raw = max((t.raw_data for t in model.graph.initializer), key=len)
        return path.read_bytes().index(raw), len(raw)
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        # TorchScript's tensors are data/<n>, torch.export's data/weights/weight_<n>
        tensors = [i for i in archive.infolist() if "data/" in i.filename and
                   Path(i.filename).name.removeprefix("weight_").isdigit()]
        info = max(tensors, key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


@pytest.mark.parametrize("name,how,engine,said", [
    ("model.ts", "truncated", "torchscript", "is not a TorchScript model"),
    ("model.ts", "corrupted", "torchscript", "weights are not the ones"),
    ("tokenizer.json", "truncated", "torchscript", "unreadable tokenizer or metrics file"),
    ("evaluation_metrics.json", "truncated", "torchscript", "unreadable tokenizer"),
    ("decode.pt2", "truncated", "export", "cannot load the torch.export programs"),
    ("decode.pt2", "corrupted", "export", "do not compute model.ts's logits"),
    ("step.onnx", "truncated", "onnx", "step.onnx cannot be loaded"),
    ("step.onnx", "corrupted", "onnx", "do not compute model.ts's logits"),
    ("model.ts", "missing", "torchscript", "has no model.ts"),
])
def test_a_damaged_export_is_one_line_naming_the_file(tiny, tmp_path, name, how, engine, said):
    if engine == "onnx" and not (tiny.directory / "step.onnx").exists():
        pytest.skip("the tiny export has no step.onnx")
    export = tmp_path / "export"
    shutil.copytree(tiny.directory, export)
    if how == "missing":
        (export / name).unlink()
    else:
        damage(export / name, how)
    assert_one_line(generate(export, "ROMEO:", "--engine", engine), said)
