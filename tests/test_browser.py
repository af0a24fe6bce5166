"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against real
`trainboard serve` and `trainboard worker` processes.

Screenshots of each page go to the test's temporary folder, or to TRAINBOARD_SCREENSHOT_DIR
when it is set (to refresh the ones in docs/)."""

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("TRAINBOARD_TEST_CHROMIUM", "/usr/bin/chromium"))
# Playwright cannot download its own browser here; these flags keep Debian's Chromium from
# needing a sandbox, a GPU or the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# A job that trains in seconds on two shared cores.
TINY_JOB = {
    "dataset": "synthetic",
    "epochs": "2",
    "train_subset": "256",
    "test_subset": "128",
    "batch_size": "32",
    "test_batch_size": "128",
    "log_interval": "2",
    "wandb_mode": "offline",
}


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"the playwright package is not installed: {exc}")
    if not CHROMIUM.is_file():
        _unavailable(f"Chromium is not at {CHROMIUM}; install it with `apt-get install chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def screenshot(page, tmp_path: Path):
    folder = Path(os.environ.get("TRAINBOARD_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def fill_job_form(page, values: dict[str, str], pretrained: bool = False) -> None:
    for name, value in values.items():
        field = page.locator(f"[name={name}]")
        if field.evaluate("element => element.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    page.locator("input[name=pretrained]").set_checked(pretrained)


def test_submit_from_the_form_and_watch_it_succeed(make_stack, page, screenshot):
    stack = make_stack()
    stack.serve()
    stack.worker()

    page.goto(stack.base_url + "/")
    page.get_by_role("link", name="New job").click()
    page.wait_for_url(re.compile(r"/jobs/new$"))
    screenshot("form")
    fill_job_form(page, {**TINY_JOB, "name": "from-the-browser", "tags": "browser, smoke"})
    page.get_by_role("button", name="Submit job").click()

    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    assert page.locator("h1").inner_text().startswith("from-the-browser")

    def finished() -> str:
        page.reload()
        status = page.locator("#status").inner_text()
        return status if status in ("succeeded", "failed", "cancelled") else ""

    status = wait_for(finished, 240, interval=0.5, message=f"job {job_id} to finish; logs:\n{stack.logs()}")
    assert status == "succeeded", page.locator("#error").all_inner_texts()
    accuracy = page.locator("#test-accuracy").inner_text()
    assert re.fullmatch(r"\d+\.\d\d%", accuracy)
    download = page.get_by_role("link", name="model.pth")
    assert download.get_attribute("href") == f"/jobs/{job_id}/artifacts/model.pth"
    assert "wandb sync " in page.locator("#wandb").inner_text()
    screenshot("job")

    page.goto(stack.base_url + "/")
    row = page.locator("table.jobs tbody tr", has_text="from-the-browser")
    assert row.locator(".badge").inner_text() == "succeeded"
    screenshot("list")


def test_a_bad_value_is_shown_beside_its_field_and_the_rest_is_kept(make_stack, page, screenshot):
    stack = make_stack()
    stack.serve()

    page.goto(stack.base_url + "/jobs/new")
    fill_job_form(page, {**TINY_JOB, "name": "keep-me", "lr": "-1", "epochs": "0"})
    page.get_by_role("button", name="Submit job").click()

    expected = {"lr": "Input should be greater than 0", "epochs": "Input should be greater than or equal to 1"}
    for name, message in expected.items():
        assert page.locator(f".field:has([name={name}]) .error").inner_text() == message
    assert page.locator(".error").count() == len(expected)
    assert page.locator("[name=name]").input_value() == "keep-me"
    assert page.locator("[name=dataset]").input_value() == "synthetic"
    assert page.locator("[name=train_subset]").input_value() == "256"
    assert page.locator("[name=lr]").input_value() == "-1"
    assert not page.locator("input[name=pretrained]").is_checked()
    screenshot("form-errors")
    assert stack.client.get("/jobs").json()["total"] == 0
