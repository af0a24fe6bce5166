"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against real
`trainboard serve` and `trainboard worker` processes.

Screenshots of each page go to the test's temporary folder, or to TRAINBOARD_SCREENSHOT_DIR
when it is set (to refresh the ones in docs/)."""

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    expect = sync_playwright = None

from app import queue, users
from app.db import get_engine
from app.models import Worker
from tests.conftest import IN_CI

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
# The list polls every 5 s; an update shows within two polls.
LIST_UPDATE_MS = 12_000
# A job that trains in seconds on two shared cores.
TINY_JOB = {
    "dataset": "synthetic",
    "epochs": "2",
    "train_subset": "256",
    "test_subset": "128",
    "batch_size": "32",
    "test_batch_size": "32",
    "log_interval": "2",
    "wandb_mode": "offline",
}


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed: `pip install -e .[dev]`")
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


def wait_finished(page, job_id: int, stack) -> str:
    """The job page's status once the job ends, as its live updates show it (no reload)."""
    expect(page.locator("#status")).to_have_text(re.compile("succeeded|failed|cancelled"), timeout=240_000)
    status = page.locator("#status").inner_text()
    assert status == "succeeded", f"job {job_id}: {page.locator('#problems').inner_text()}\n{stack.logs()}"
    return status


def test_submit_watch_live_clone_and_compare(make_stack, page, screenshot):
    stack = make_stack()
    stack.serve()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])

    page.goto(stack.base_url + "/")
    page.get_by_role("link", name="New job").click()
    page.wait_for_url(re.compile(r"/jobs/new$"))
    screenshot("form")
    fill_job_form(page, {**TINY_JOB, "name": "from-the-browser", "tags": "browser, smoke"})
    page.get_by_role("button", name="Submit job").click()

    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    first_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("h1")).to_have_text("from-the-browser")
    expect(page.locator("#status")).to_have_text("queued")
    # A reload would drop this marker and the recorded statuses: the page must update in place.
    page.evaluate("""() => {
        window.seenStatuses = [document.getElementById("status").textContent];
        new MutationObserver(() => {
            const status = document.getElementById("status").textContent;
            if (status !== window.seenStatuses.at(-1)) window.seenStatuses.push(status);
        }).observe(document.getElementById("live"), {childList: true, subtree: true, characterData: true});
    }""")
    stack.worker()

    wait_finished(page, first_id, stack)
    seen = page.evaluate("window.seenStatuses")
    assert seen[0] == "queued" and seen[-1] == "succeeded", seen
    assert page.title() == "from-the-browser (succeeded) · trainboard"
    assert re.fullmatch(r"\d+\.\d\d%", page.locator("#test-accuracy").inner_text())
    assert page.get_by_role("link", name="model.pth").get_attribute("href") == f"/jobs/{first_id}/artifacts/model.pth"
    expect(page.locator("#progress-text")).to_contain_text("100% · epoch 2/2")

    accuracy_points = page.locator("#test-accuracy-chart circle title")
    expect(accuracy_points).to_have_count(2)
    assert re.fullmatch(r"epoch 2: \d+\.\d\d%", accuracy_points.nth(1).text_content())
    assert page.locator("#train-loss-steps-chart circle").count() >= 2
    expect(page.locator("#log-tail")).to_contain_text("epoch 2/2")

    # The last epoch's example predictions, the first test image of each of the 4 test batches.
    examples = page.locator("#examples figure")
    expect(examples).to_have_count(4)
    for caption in examples.locator("figcaption").all_inner_texts():
        assert re.fullmatch(r"Pred:\w+ Truth:\w+", caption), caption
    page.wait_for_function("[...document.querySelectorAll('#examples img')].every(img => img.complete)")
    assert page.evaluate("[...document.querySelectorAll('#examples img')].map(img => img.naturalWidth)") == [32] * 4

    sync_command = page.locator("#sync-command").inner_text()
    assert sync_command.startswith("wandb sync ")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == sync_command
    screenshot("job")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot("job-phone")
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 1280, "height": 900})
    screenshot("job-dark")
    page.emulate_media(color_scheme="light")

    page.get_by_role("link", name="Clone").click()
    page.wait_for_url(re.compile(rf"/jobs/new\?clone={first_id}$"))
    expect(page.locator("#clone-note")).to_contain_text("from-the-browser")
    for name, value in TINY_JOB.items():
        assert page.locator(f"[name={name}]").input_value() == value, name
    assert page.locator("[name=tags]").input_value() == "browser, smoke"
    assert not page.locator("input[name=pretrained]").is_checked()
    page.locator("[name=lr]").fill("0.05")
    page.locator("[name=name]").fill("cloned-higher-lr")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    second_id = int(page.url.rsplit("/", 1)[1])
    wait_finished(page, second_id, stack)

    page.goto(stack.base_url + "/")
    row = page.locator("table.jobs tbody tr", has_text="from-the-browser")
    expect(row.locator(".badge")).to_have_text("succeeded")
    compare_button = page.get_by_role("button", name="Compare selected")
    expect(compare_button).to_be_disabled()
    page.get_by_label(f"Select job {first_id} (from-the-browser) to compare").check()
    page.get_by_label(f"Select job {second_id} (cloned-higher-lr) to compare").check()
    expect(page.locator("#compare-hint")).to_have_text("2 selected.")
    screenshot("list")
    compare_button.click()

    page.wait_for_url(re.compile(r"/compare\?"))
    expect(page.locator("#legend li")).to_have_count(2)
    expect(page.locator("#test-accuracy-chart g.series")).to_have_count(2)
    expect(page.locator("#test-accuracy-chart circle")).to_have_count(4)
    differing = page.locator("#params tr.differs th")
    assert [text.split()[-1] for text in differing.all_inner_texts()] == ["lr"]
    screenshot("compare")


def test_the_list_follows_new_and_running_jobs_without_a_reload(make_stack, page):
    stack = make_stack()
    stack.serve()
    tiny = {name: int(value) if value.isdigit() else value for name, value in TINY_JOB.items()}

    page.goto(stack.base_url + "/")
    expect(page.locator("#no-jobs")).to_be_visible()
    page.evaluate("window.notReloaded = true")  # a reload would drop it
    first = stack.submit(name="first-of-two", pretrained=False, **tiny)["id"]
    expect(page.locator(f"#job-{first} .badge")).to_have_text("queued", timeout=LIST_UPDATE_MS)
    page.get_by_label(f"Select job {first} (first-of-two) to compare").check()
    expect(page.locator("#compare-hint")).to_have_text("1 selected.")

    second = stack.submit(name="second-of-two", pretrained=False, **tiny)["id"]
    expect(page.locator("#job-rows tr")).to_have_count(2, timeout=LIST_UPDATE_MS)
    assert page.locator(f"#job-{second}").is_visible()
    stack.worker()
    for job_id in (first, second):
        expect(page.locator(f"#job-{job_id} .badge")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#status-counts")).to_contain_text("succeeded 2", timeout=LIST_UPDATE_MS)
    expect(page.locator(f"#job-{first} td.number")).to_have_text(re.compile(r"\d+\.\d\d%"), timeout=LIST_UPDATE_MS)

    # The ticked box outlived every update of its row; the count goes on from it.
    assert page.get_by_label(f"Select job {first} (first-of-two) to compare").is_checked()
    page.get_by_label(f"Select job {second} (second-of-two) to compare").check()
    expect(page.locator("#compare-hint")).to_have_text("2 selected.")
    expect(page.get_by_role("button", name="Compare selected")).to_be_enabled()
    assert page.evaluate("window.notReloaded") is True


def test_cancel_a_queued_job_then_retry_it(make_stack, page):
    stack = make_stack()
    stack.serve()
    job = stack.submit(name="to-cancel", dataset="synthetic", pretrained=False)

    page.goto(f"{stack.base_url}/jobs/{job['id']}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("queued")  # dismissing the question keeps the job

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#error")).to_contain_text("cancelled before it started")

    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    assert int(page.url.rsplit("/", 1)[1]) != job["id"]
    expect(page.locator("#status")).to_have_text("queued")
    expect(page.locator("#summary")).to_contain_text(f"retry of #{job['id']}")


def test_pause_a_running_job_and_resume_it_from_its_page(make_stack, page):
    stack = make_stack()
    stack.serve()
    job = stack.submit(
        name="to-pause", dataset="synthetic", pretrained=False, model="resnet18_cifar", epochs=4, batch_size=16,
        train_subset=160, test_subset=32, test_batch_size=32, log_interval=1, wandb_mode="disabled",
    )
    stack.worker()
    page.goto(f"{stack.base_url}/jobs/{job['id']}")
    expect(page.locator("#status")).to_have_text("running", timeout=120_000)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#status")).to_have_text("paused", timeout=120_000)
    expect(page.locator("#paused")).to_contain_text("Resume puts it back in the queue")
    expect(page.locator("#checkpoint")).to_be_visible()
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#status")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#resumed")).to_contain_text("Resumed from its checkpoint after epoch")
    assert stack.job(job["id"])["attempts"] == 1  # the pause spent no attempt


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


def test_with_a_token_log_in_submit_from_the_form_and_log_out(make_stack, page):
    token = "browser-token-0123456789-abcdef"
    stack = make_stack(TRAINBOARD_TOKEN=token)
    stack.client.headers["Authorization"] = f"Bearer {token}"
    stack.serve()

    page.goto(stack.base_url + "/jobs/new")
    page.wait_for_url(re.compile(r"/login\?next=/jobs/new$"))
    page.fill("[name=token]", "not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#token-error")).to_contain_text("not right")

    page.fill("[name=token]", token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/jobs/new$"))
    fill_job_form(page, {**TINY_JOB, "name": "behind-the-token"})
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("h1")).to_have_text("behind-the-token")

    # The session alone is not enough for a post: without the form's CSRF token it is refused.
    status = page.evaluate("""async () => (await fetch("/jobs/new", {method: "POST",
        headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "epochs=2"})).status""")
    assert status == 403
    assert stack.client.get("/jobs").json()["total"] == 1

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(stack.base_url + "/")
    page.wait_for_url(re.compile(r"/login\?next=/$"))


def test_docs_render_offline_and_try_it_out_posts_as_the_user(make_stack, page, screenshot):
    admin_token = "browser-token-0123456789-abcdef"
    stack = make_stack(TRAINBOARD_TOKEN=admin_token)
    stack.client.headers["Authorization"] = f"Bearer {admin_token}"
    stack.serve()
    alice_token = users.add(get_engine(stack.env["TRAINBOARD_DATABASE_URL"]), "alice")
    # Offline: anything not from the app itself fails, and is recorded.
    elsewhere: list[str] = []
    page.context.route(
        re.compile(r"^(?!" + re.escape(stack.base_url) + r"/).*"),
        lambda route: (elsewhere.append(route.request.url), route.abort()),
    )
    policy_violations: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and policy_violations.append(message.text))

    page.goto(stack.base_url + "/login?next=/docs")
    page.fill("[name=token]", alice_token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/docs$"))
    expect(page.locator("#signed-in")).to_contain_text("alice")
    create = page.locator("#operations-jobs-create_job_jobs_post")
    expect(create).to_be_visible()
    expect(page.locator("#operations-jobs-cancel_job_jobs__job_id__cancel_post")).to_be_visible()
    screenshot("docs")

    create.locator(".opblock-summary").click()
    create.locator(".try-out__btn").click()
    create.locator(".execute").click()
    expect(create.locator(".live-responses-table tbody .response-col_status")).to_have_text("201")
    assert [job["owner"] for job in stack.client.get("/jobs").json()["items"]] == ["alice"]
    assert elsewhere == [] and policy_violations == []


def test_a_waiting_job_says_why_then_gets_notes_and_is_deleted_after_a_question(make_stack, page, screenshot):
    stack = make_stack()
    stack.serve()
    job = stack.submit(name="to-delete", dataset="synthetic", pretrained=False)

    page.goto(f"{stack.base_url}/jobs/{job['id']}")
    expect(page.locator("#waiting-reason")).to_contain_text("no worker is alive; start one with `trainboard worker`")
    expect(page.locator("#queue-position")).to_have_text("position 1")
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#edit-form")).to_be_visible()  # the link opens the folded form
    page.get_by_label("Notes").fill("first line\nsecond line")
    screenshot("job-waiting-edit")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notes")).to_have_text("first line\nsecond line")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#status")).to_have_text("cancelled")  # dismissing the question keeps the job
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{stack.base_url}/")
    assert stack.client.get(f"/jobs/{job['id']}").status_code == 404


def test_the_form_groups_its_fields_and_sums_up_the_run_as_values_change(make_stack, page):
    stack = make_stack()
    stack.serve()
    # A job that trained at 100 images/s on a worker without a GPU, as the queue records one.
    engine = get_engine(stack.env["TRAINBOARD_DATABASE_URL"])
    queue.register_worker(engine, Worker(id="laptop", host="laptop", pid=1, slots=[{"index": 0, "device": "cpu"}]))
    done = stack.submit(name="measured", dataset="synthetic", pretrained=False)
    queue.finish(engine, queue.claim(engine, "laptop", 60), "succeeded", metrics={"train_images_per_second": 100.0})

    page.goto(stack.base_url + "/jobs/new")
    expect(page.locator(".field-group > legend, .field-group > summary")).to_have_text(
        ["The tutorial's settings", "Recipe", "Weights & Biases", "Advanced"]
    )
    expect(page.locator("label[for=lr]")).to_have_text("Learning rate lr")
    expect(page.locator("#group-tutorial [name=epochs]")).to_be_visible()
    expect(page.locator("#group-recipe [name=optimizer]")).to_be_visible()
    advanced = page.locator("#group-advanced")
    assert advanced.get_attribute("open") is None
    expect(advanced.locator("[name=compile]")).to_be_hidden()

    summary = page.locator("#form-summary")
    expect(summary).to_have_text("5 epochs × 50,000 images = 250,000 training images")
    page.locator("[name=dataset]").select_option("synthetic")
    like_job = f"on a CPU like the last similar job (#{done['id']})"
    expect(summary).to_have_text(f"5 epochs × 10,000 images = 50,000 training images; about 8 min {like_job}")
    page.locator("[name=epochs]").fill("2")
    expect(summary).to_have_text(f"2 epochs × 10,000 images = 20,000 training images; about 3 min {like_job}")
    page.locator("[name=train_subset]").fill("256")
    expect(summary).to_have_text(f"2 epochs × 256 images = 512 training images; under a minute {like_job}")
    page.locator("[name=model]").select_option("resnet18_cifar")
    expect(summary).to_have_text("2 epochs × 256 images = 512 training images")

    page.get_by_text("Advanced", exact=True).click()
    expect(advanced.locator("[name=compile]")).to_be_visible()


# The sweep page polls every 5 s; an update shows within two polls.
SWEEP_UPDATE_MS = 12_000
SWEEP_CONFIG = """\
name: browser-sweep
method: random
metric: {name: test_accuracy, goal: maximize}
run_cap: 3
parallel: 2
seed: 11
parameters:
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}
  epochs: {value: 2}
  dataset: {value: synthetic}
"""


def test_start_a_sweep_from_the_form_follow_its_trials_and_cancel_it(make_stack, page, screenshot):
    stack = make_stack()
    stack.serve()
    engine = get_engine(stack.env["TRAINBOARD_DATABASE_URL"])

    page.goto(stack.base_url + "/")
    page.get_by_role("link", name="Sweeps").click()
    page.wait_for_url(re.compile(r"/sweeps$"))
    expect(page.locator("#no-sweeps")).to_be_visible()
    page.get_by_role("link", name="New sweep").click()
    page.wait_for_url(re.compile(r"/sweeps/new$"))

    # A config that does not hold comes back with the offending key named beside it, as typed.
    config_area = page.get_by_label("Sweep config")
    config_area.fill(SWEEP_CONFIG.replace("run_cap: 3", "run_cap: 0"))
    page.get_by_role("button", name="Start sweep").click()
    expect(page.locator("#config-error-list li")).to_have_text(["run_cap: Input should be greater than or equal to 1"])
    assert "run_cap: 0" in config_area.input_value()
    screenshot("sweep-form-errors")

    # A chosen file is used instead of the text area (still the refused config).
    page.get_by_label("Or a config file").set_input_files(
        {"name": "sweep.yaml", "mimeType": "application/yaml", "buffer": SWEEP_CONFIG.encode()}
    )
    page.get_by_role("button", name="Start sweep").click()
    page.wait_for_url(re.compile(r"/sweeps/\d+$"))
    sweep_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("h1")).to_have_text("browser-sweep")
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#trial-rows tr .badge")).to_have_text(["queued", "queued"])  # parallel 2
    page.evaluate("window.notReloaded = true")  # a reload would drop it

    # A trial trains to its end, reported through the queue as a worker does: the page follows.
    claim = queue.claim(engine, "browser-test", 60)
    for epoch, accuracy in ((1, 40.0), (2, 55.5)):
        metrics = {"epoch": epoch, "test_accuracy": accuracy, "test_loss": 1.0, "train_loss": 1.1}
        queue.record_progress(engine, claim, progress={"epoch": epoch, "epochs": 2}, metrics=metrics, points=[("epoch", epoch, metrics)])
    queue.finish(engine, claim, "succeeded", metrics=metrics)
    expect(page.locator(f"#trial-{claim.job_id} .badge")).to_have_text("succeeded", timeout=SWEEP_UPDATE_MS)
    expect(page.locator("#best-value")).to_have_text("55.50%")
    expect(page.locator("#sweep-metric-chart circle")).to_have_count(2)
    expect(page.locator("#param-lr-chart circle.dot.best")).to_have_count(1)
    assert page.evaluate("window.notReloaded") is True
    screenshot("sweep")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#reason")).to_contain_text("cancelled by request")
    expect(page.locator("#trial-rows tr .badge")).to_have_text(["succeeded", "cancelled"])
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    assert stack.client.get(f"/sweeps/{sweep_id}").json()["counts"] == {"succeeded": 1, "cancelled": 1}

    page.get_by_role("link", name="New sweep from this one").click()
    page.wait_for_url(re.compile(rf"/sweeps/new\?from={sweep_id}$"))
    expect(page.locator("#source-note")).to_contain_text("browser-sweep")
    prefilled = config_area.input_value()
    assert "method: random" in prefilled and "log_uniform_values" in prefilled and "browser-sweep" not in prefilled

    page.goto(stack.base_url + "/sweeps")
    expect(page.locator(f"#sweep-{sweep_id} .badge")).to_have_text("cancelled")
    expect(page.locator(f"#sweep-{sweep_id}")).to_contain_text("55.50%")


def test_choose_a_lab_recipe_in_the_form_and_watch_its_job_train(make_stack, page, screenshot):
    repository = Path(__file__).resolve().parents[1]
    stack = make_stack(TRAINBOARD_RECIPES="tests.support.lab_recipe:recipe", PYTHONPATH=str(repository))
    stack.serve()
    stack.worker()

    page.goto(stack.base_url + "/jobs/new")
    selector = page.locator("#recipe-selector")
    expect(selector.get_by_role("link", name=re.compile("ResNet-18 on CIFAR-10"))).to_have_attribute("aria-current", "true")
    selector.get_by_role("link", name=re.compile("A lab's demo")).click()
    page.wait_for_url(re.compile(r"/jobs/new\?recipe=lab-demo$"))
    expect(page.locator("legend").first).to_have_text("A lab's demo")
    expect(page.locator("[name=lr]")).to_have_count(0)
    page.locator("[name=width]").fill("0")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#width-error")).to_contain_text("greater than or equal to 1")
    page.locator("[name=width]").fill("3")
    page.locator("[name=name]").fill("lab-from-the-browser")
    screenshot("lab-recipe-form")
    page.get_by_role("button", name="Submit job").click()

    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#recipe")).to_contain_text("lab-demo version 0.3")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=120_000)
    # Its metric, per epoch, in the table and its chart; no Pause for a recipe that does not checkpoint.
    expect(page.locator("#epochs thead")).to_contain_text("Score")
    expect(page.locator("#epochs tbody tr")).to_have_count(2)
    expect(page.locator("#epochs tbody tr").last).to_contain_text("0.6")
    expect(page.locator("#score-chart")).to_have_count(1)
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
