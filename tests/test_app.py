"""The web app, served for real on 127.0.0.1 from a tiny export: through gradio_client
(generate, evaluate, hostile input, 60 concurrent requests) and in headless Chromium
driven by Playwright."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gptmini.app.inspection import shown
from gptmini.app.views import surprise_html
from gptmini.evaluation.metrics import evaluate_tokens
from gptmini.inference.generation import Sampling
from gptmini.report import metrics_markdown
from gptmini.team.stack import free_port
from tiny_export import TinyExport, build_tiny_export, generated

pytestmark = [pytest.mark.app, pytest.mark.usefixtures("one_thread")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LOCAL_ONLY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
              "GRADIO_ANALYTICS_ENABLED": "False"}


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen
    tiny: TinyExport
    log: Path

    def alive(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.url + "/", timeout=10) as response:
                return response.status == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    tiny = build_tiny_export(root)
    port = free_port()
    log = root / "app.log"
    env = {**os.environ, **LOCAL_ONLY}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gptmini.cli", "app",
                                    "--export-dir", str(tiny.directory), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
    app = Served(f"http://127.0.0.1:{port}", port, process, tiny, log)
    deadline = time.monotonic() + 120
    while not app.alive():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the app did not start:\n{log.read_text()}")
        time.sleep(0.5)
    old_env = {k: os.environ.get(k) for k in LOCAL_ONLY}
    os.environ.update(LOCAL_ONLY)
    yield app
    for key, value in old_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served.url, verbose=False, max_workers=64, analytics_enabled=False,
                  download_files=False)


def expected_text(tiny: TinyExport, prompt: str, sampling: Sampling) -> str:
    return prompt + generated(tiny.model, tiny.tokenizer, prompt, sampling)


def test_generate_through_the_client_equals_the_library(served, client):
    vocab = served.tiny.tokenizer.vocab_size
    text, stats = client.predict("ROMEO:", 0.9, 7, 0.95, 120, 5, api_name="/generate")
    assert text == expected_text(served.tiny, "ROMEO:", Sampling(120, 0.9, 7, 0.95, seed=5))
    assert "**120 characters**" in stats and "chars/s" in stats and "seed 5" in stats
    greedy, _ = client.predict("JULIET:", 0, vocab, 1, 50, -1, api_name="/generate")
    assert greedy == expected_text(served.tiny, "JULIET:", Sampling(50, 0.0))


def test_generate_stops_before_the_stop_string(served, client):
    full = expected_text(served.tiny, "ROMEO:", Sampling(200, 0.9, seed=5))
    generated = full[len("ROMEO:"):]
    stop = generated[40:43]
    cut = generated.find(stop)
    text, stats = client.predict("ROMEO:", 0.9, served.tiny.tokenizer.vocab_size, 1, 200, 5,
                                 stop, api_name="/generate")
    assert text == "ROMEO:" + generated[:cut]
    assert text == expected_text(served.tiny, "ROMEO:", Sampling(200, 0.9, seed=5, stop=stop))
    assert f"**{cut} characters**" in stats


def test_generate_evaluate_and_inspect_share_one_limit_of_two(served, client):
    """Two long generations hold both places: an evaluation waits in the queue until one
    of them ends (with a limit per tab it would run at once)."""
    vocab = served.tiny.tokenizer.vocab_size
    generations = [client.submit("ROMEO:", 1.0, vocab, 1, 2000, seed, api_name="/generate")
                   for seed in (1, 2)]
    deadline = time.monotonic() + 60
    while not all(job.outputs() for job in generations):  # both streaming
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waiting = [client.submit("ROMEO: thou art", api_name="/evaluate"),
               client.submit("ROMEO:", 3, api_name="/inspect")]
    assert not any(job.done() for job in generations)
    # When each job ends, not whether a generation outlasts a fixed sleep: the ONNX engine
    # makes 2,000 tokens of the tiny model in well under a second. Run at once (a limit per
    # tab), either waiting job would end in milliseconds, before both generations.
    ended: dict[int, float] = {}
    jobs = [*generations, *waiting]
    while len(ended) < len(jobs):
        assert time.monotonic() < deadline + 120
        for i, job in enumerate(jobs):
            if i not in ended and job.done():
                ended[i] = time.monotonic()
        time.sleep(0.002)
    first_generation_end = min(ended[0], ended[1])
    assert all(ended[i] >= first_generation_end for i in (2, 3)), ended
    for job in jobs:
        job.result(timeout=10)


def test_inspect_through_the_client_gives_the_models_candidates(served, client):
    import torch

    plot, table, notes = client.predict("ROMEO:\nO", 3, api_name="/inspect")
    rows = table["data"]
    assert table["headers"] == ["position", "token", "#1", "#2", "#3"]
    tiny = served.tiny
    ids = tiny.tokenizer.encode("ROMEO:\nO")
    assert [row[1] for row in rows] == ["R", "O", "M", "E", "O", ":", "\\n", "O"]
    with torch.no_grad():
        probs = tiny.model(torch.tensor([ids]))[0].softmax(-1)
    for pos, row in enumerate(rows):
        best = probs[pos].topk(3)
        for rank in range(3):
            token, p = row[2 + rank].rsplit("  ", 1)
            assert float(p) == pytest.approx(best.values[rank].item(), abs=6e-4)
            assert token == shown(tiny.tokenizer.decode([best.indices[rank].item()]))
    assert plot and notes == ""


def test_evaluate_through_the_client_gives_the_evaluate_stage_metrics(served, client):
    text = "ROMEO:\nThou art the king, sweet lord; what night is this?\n"
    table, picture, metrics = client.predict(text, api_name="/evaluate")
    tiny = served.tiny
    expected = evaluate_tokens(tiny.model, np.asarray(tiny.tokenizer.encode(text)),
                               len(text) - 1, progress=False)
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert table.strip() == metrics_markdown(metrics).strip()  # Gradio strips the last \n
    assert f"| BPC | {expected['bpc']:.4f} bits/char |" in table
    # One coloured span per predicted character, the first one is context.
    assert picture.count("bits\">") == len(text) - 1
    assert picture.count('title="context"') == 1


def test_notices_reach_the_user(served, client):
    _, stats = client.predict("", 1, 5, 1, 10, 1, api_name="/generate")
    assert "Note: the prompt is empty: generation starts from a newline" in stats
    _, stats = client.predict("thou " * 30, 1, 5, 1, 10, 1, api_name="/generate")
    assert "the prompt is 150 tokens long: the model sees only the last 24" in stats


HOSTILE = [
    (("café", 1, 5, 1, 10, 1), "characters outside the model's vocabulary in the prompt: 'é'"),
    (("a\x1b[2Jb\x00", 1, 5, 1, 10, 1), "control characters (or lone surrogates) are not "
                                        "allowed in the prompt: '\\x00' (U+0000), '\\x1b'"),
    (("x", -1, 5, 1, 10, 1), "temperature = -1.0: must be a number, 0 or more"),
    (("x", 1, 0, 1, 10, 1), "top-k = 0: must be a whole number from 1 to the vocabulary size"),
    (("x", 1, 10_000, 1, 10, 1), "top-k = 10000"),
    (("x", 1, 5, 0, 10, 1), "top-p = 0.0: must be in (0, 1]"),
    (("x", 1, 5, 1.5, 10, 1), "top-p = 1.5: must be in (0, 1]"),
    (("x", 1, 5, 1, 0, 1), "length = 0: must be a whole number, 1 or more"),
    (("x", 1, 5, 1, 100_000, 1), "length = 100000: must be at most 2000"),
    (("x", None, 5, 1, 10, 1), "temperature = None: must be a number"),
    (("x" * 100_001, 1, 5, 1, 10, 1), "the prompt is 100,001 characters: at most 100,000"),
]


@pytest.mark.parametrize("args,message", HOSTILE, ids=[m[:30] for _, m in HOSTILE])
def test_hostile_generate_input_is_a_clear_message(served, client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        client.predict(*args, api_name="/generate")
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)


@pytest.mark.parametrize("text,message", [
    ("a", "it needs at least 2"),
    ("ROMEO: 😀", "'😀' (U+1F600)"),
    ("x" * 10_001, "the text is 10,001 characters: at most 10,000 here"),
])
def test_hostile_evaluate_input_is_a_clear_message(served, client, text, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=".") as error:
        client.predict(text, api_name="/evaluate")
    assert message in str(error.value)


def test_the_app_still_serves_after_hostile_input(served, client):
    text, _ = client.predict("KING", 0, 5, 1, 20, 1, api_name="/generate")
    assert text == expected_text(served.tiny, "KING", Sampling(20, 0.0))
    assert served.alive()


@pytest.mark.load
def test_sixty_concurrent_generate_requests_all_answered(served, client):
    n, length = 60, 40
    vocab = served.tiny.tokenizer.vocab_size
    start = time.monotonic()
    jobs = [client.submit("ROMEO:", 0.9, vocab, 1, length, seed, api_name="/generate")
            for seed in range(n)]
    answers = [job.result(timeout=180) for job in jobs]
    elapsed = time.monotonic() - start
    for seed, (text, stats) in enumerate(answers):
        assert text == expected_text(served.tiny, "ROMEO:", Sampling(length, 0.9, seed=seed))
        assert f"seed {seed} · done" in stats
    assert elapsed < 180
    assert served.alive()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_the_app_listens_on_127_0_0_1_only(served):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read listening sockets from")
    assert listening_addresses(served.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


def test_surprise_picture_escapes_the_text():
    page = surprise_html([("<img src=x onerror=alert(1)>", None), ("${x}{{y}}&", 3.0)])
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "${" not in page and "{{" not in page and "&amp;" in page


@pytest.mark.browser
def test_in_headless_chromium(served):
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: install Debian's package "
                    "(apt-get install chromium; .ci/run does) to run the browser test")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(served.url + "/")
            page.locator("#prompt textarea").fill("JULIET:\nO Romeo")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#stats")).to_contain_text("done")
            output = page.locator("#output textarea").input_value()
            assert output.startswith("JULIET:\nO Romeo") and len(output) == 15 + 500
            expect(page.locator("#stats")).to_contain_text("chars/s")

            # A prompt the model cannot take: a message in the page, nothing runs.
            page.locator("#prompt textarea").fill("<img src=x onerror=window.pwned=1>")
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_text("outside the model's vocabulary").first).to_be_visible()
            assert page.evaluate("window.pwned") is None

            page.get_by_role("tab", name="Evaluate").click()
            text = "ROMEO:\nThou art the king, sweet lord.\n"
            page.locator("#eval-text textarea").fill(text)
            page.get_by_role("button", name="Evaluate").click()
            expect(page.locator("#metrics")).to_contain_text("perplexity")
            expect(page.locator("#metrics")).to_contain_text("BPC")
            expect(page.locator("#surprise span[title$='bits']")).to_have_count(len(text) - 1)

            page.get_by_role("tab", name="Model").click()
            expect(page.get_by_text("1.5000 bits/char").first).to_be_visible()
            expect(page.get_by_text("trained 7 steps").first).to_be_visible()
        finally:
            browser.close()
    assert served.alive()


def _chars_per_second(stats: str) -> float:
    import re

    return float(re.search(r"([\d,]+) chars/s", stats).group(1).replace(",", ""))


def _browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.mark.browser
def test_in_chromium_streaming_keeps_up_with_the_cli_and_stop_cancels(served):
    """The page's own chars/s for 2,000 streamed characters is at least half the CLI's on
    the same model; Stop ends a running generation (the text stops growing)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import expect, sync_playwright

    cli = subprocess.run([sys.executable, "-m", "gptmini.cli", "generate", "ROMEO:",
                          "-n", "2000", "--seed", "3", "--export-dir",
                          str(served.tiny.directory)], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    cli_speed = _chars_per_second(cli.stderr)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(served.url + "/")
            page.locator("#prompt textarea").fill("ROMEO:")
            for label, value in (("Length", "2000"), ("Seed", "3")):
                page.get_by_label(label, exact=True).fill(value)
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#stats")).to_contain_text("done", timeout=120_000)
            assert len(page.locator("#output textarea").input_value()) == 6 + 2000
            page_speed = _chars_per_second(page.locator("#stats").inner_text())
            print(f"page {page_speed:,.0f} chars/s, CLI {cli_speed:,.0f} chars/s: "
                  f"{page_speed / cli_speed:.2f}")
            assert page_speed >= 0.5 * cli_speed

            # Stop: a 2,000-token generation cancelled as soon as text arrives. The tiny
            # model makes 2,000 tokens in about a third of a second on ONNX Runtime, so the
            # click can come after the end: a generation that ended is no cancellation, and
            # the next seed tries again.
            for seed in range(4, 12):
                page.get_by_label("Seed", exact=True).fill(str(seed))
                page.get_by_role("button", name="Generate").click()
                expect(page.locator("#stats")).to_contain_text(
                    re.compile(f"seed {seed} . (generating|done)"), timeout=120_000)
                page.get_by_role("button", name="Stop").click()
                page.wait_for_timeout(1000)  # the last update on its way
                if "done" not in page.locator("#stats").inner_text():
                    break
            else:
                pytest.fail("every generation ended before Stop reached it")
            shown_now = page.locator("#output textarea").input_value()
            page.wait_for_timeout(1500)
            assert page.locator("#output textarea").input_value() == shown_now
            assert len(shown_now) < 6 + 2000
            assert "done" not in page.locator("#stats").inner_text()
            # And the app goes on: the next generation runs to the end.
            page.get_by_label("Length", exact=True).fill("50")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#stats")).to_contain_text("done", timeout=120_000)
            assert len(page.locator("#output textarea").input_value()) == 6 + 50
        finally:
            browser.close()
    assert served.alive()


@pytest.mark.browser
def test_in_chromium_inspect_shows_attention_maps_and_candidates(served, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(served.url + "/")
            page.get_by_role("tab", name="Inspect").click()
            page.locator("#inspect-prompt textarea").fill("JULIET:\nO")
            page.get_by_role("button", name="Inspect").click()
            # The candidates' table (its header and the last position), the maps as one
            # picture.
            expect(page.locator("#candidates")).to_contain_text("position", timeout=120_000)
            expect(page.locator("#attention img")).to_be_visible(timeout=120_000)
            box = page.locator("#attention img").bounding_box()
            assert box["width"] > 200 and box["height"] > 200
            expect(page.locator("#candidates")).to_contain_text("#5", timeout=120_000)
            page.screenshot(path=str(tmp_path / "inspect.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "inspect.png").stat().st_size > 10_000
