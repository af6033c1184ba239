"""The README's screenshots of the app: serve an export on 127.0.0.1, drive Debian's
headless Chromium through Playwright, save docs/app-generate.png and docs/app-evaluate.png.

    python docs/screenshot.py --export-dir data/export
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EVALUATE_TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\n"
                 "It is the east, and Juliet is the sun.\n")


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not start at {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", type=Path, default=Path("data/export"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "-m", "gptmini.cli", "app",
                                "--export-dir", str(args.export_dir), "--port", str(port)],
                               env=env)
    try:
        wait_until_up(url, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium,
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.locator("#prompt textarea").fill("JULIET:\nO Romeo, Romeo")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#stats")).to_contain_text("done", timeout=60_000)
            page.screenshot(path=str(args.out / "app-generate.png"), full_page=True)
            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#eval-text textarea").fill(EVALUATE_TEXT)
            page.get_by_role("button", name="Evaluate").click()
            expect(page.locator("#metrics")).to_contain_text("BPC", timeout=60_000)
            page.screenshot(path=str(args.out / "app-evaluate.png"), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)
    print(f"wrote {args.out / 'app-generate.png'} and {args.out / 'app-evaluate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
