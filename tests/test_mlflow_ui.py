"""The MLflow UI opens where a user of this project looks: the link `gptmini runs` prints
lands on the experiment's training runs, in headless Chromium against a real server."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_app import CHROMIUM, CHROMIUM_ARGS
from test_faults import TrackingServer

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def log_a_run(uri: str, name: str, cwd: Path) -> None:
    """A run made the way the pipeline makes one (the project's experiment, its tags)."""
    code = ("import mlflow; from gptmini.tracking.runs import mlflow_run\n"
            f"with mlflow_run(run_name={name!r}):\n    mlflow.log_metric('bpc', 2.16)\n")
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, timeout=300,
                   env={**os.environ, "MLFLOW_TRACKING_URI": uri})


def test_the_printed_link_opens_the_training_runs_not_the_genai_overview(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import expect, sync_playwright

    server = TrackingServer(tmp_path)
    server.start()
    try:
        log_a_run(server.url, "ui-probe", tmp_path)
        runs = subprocess.run([sys.executable, "-m", "gptmini.cli", "runs",
                               "--tracking-uri", server.url], capture_output=True, text=True,
                              timeout=300, check=True).stdout
        link = runs.rsplit("compare them in the MLflow UI: ", 1)[1].split()[0]
        assert link.startswith(server.url) and link.endswith("workflowType=machine_learning")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page()
            # Without the view in the address MLflow 3.17 shows the GenAI overview (traces,
            # "Detect Issues"): the reason the project prints its own link.
            page.goto(link.split("/runs?")[0])
            expect(page.get_by_text("Detect Issues").first).to_be_visible(timeout=60_000)
            page.goto(link)
            expect(page.get_by_role("link", name="ui-probe")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Detect Issues")).to_have_count(0)
            assert "/runs" in page.url and "workflowType=machine_learning" in page.url
            browser.close()
    finally:
        server.kill()
