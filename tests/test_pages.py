"""The HTML pages over HTTP against a real SQLite file: the list (filter, search, pages), a job's
page and its live fragment, the form (clone), and the compare page. Jobs get their progress and
metrics through the queue functions a worker uses."""

import json
import re
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app import forms, queue
from app.db import get_engine
from app.models import Worker
from app.settings import Settings

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def engine(client, settings: Settings):
    return get_engine(settings.database_url)


def page(client: TestClient, path: str, expected: int = 200) -> str:
    response = client.get(path, headers=HTML)
    assert response.status_code == expected, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def submit(client: TestClient, **params) -> dict:
    response = client.post("/jobs", json=params)
    assert response.status_code == 201, response.text
    return response.json()


def train(engine, epochs_done: int, epochs: int, *, batch: int = 10, batches: int = 10, accuracy_step: float = 5.0):
    """Claim the oldest queued job and report epochs as the worker does; returns the claim."""
    claim = queue.claim(engine, "test-worker", 60)
    assert claim is not None
    for epoch in range(1, epochs_done + 1):
        metrics = {
            "epoch": epoch, "test_accuracy": 20 + accuracy_step * epoch, "test_loss": 2 - 0.1 * epoch,
            "train_loss": 2.1 - 0.1 * epoch, "train_images_per_second": 900.0 + epoch, "epoch_seconds": 30.0,
        }
        train_points = [
            ("train", (epoch - 1) * batches + step, {"epoch": epoch, "batch": step, "train_loss": 2.2 - 0.01 * step})
            for step in (5, 10)
        ]
        assert queue.record_progress(
            engine, claim, progress={"epoch": epoch, "epochs": epochs, "batch": batches, "batches": batches},
            metrics=metrics, points=[*train_points, ("epoch", epoch, metrics)],
        )
    if batch < batches:
        queue.record_progress(engine, claim, progress={"epoch": epochs_done, "epochs": epochs, "batch": batch, "batches": batches})
    return claim


class _TopLevel(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.depth, self.ids = 0, []

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.ids.append(dict(attrs).get("id"))
        if tag not in self.VOID:
            self.depth += 1

    def handle_startendtag(self, tag, attrs):
        if self.depth == 0:
            self.ids.append(dict(attrs).get("id"))

    def handle_endtag(self, tag):
        self.depth -= 1


def fragment_ids(html: str) -> list[str | None]:
    """The ids of a fragment's top-level elements, in order (None for one without an id)."""
    parser = _TopLevel()
    parser.feed(html)
    return parser.ids


def chart_titles(html: str, chart_id: str) -> list[str]:
    svg = re.search(rf'<svg class="chart" id="{chart_id}".*?</svg>', html, re.S)
    assert svg, f"no chart {chart_id}"
    return re.findall(r"<circle [^>]*><title>(.*?)</title></circle>", svg.group(0))


# ---------------------------------------------------------------------------------------------
# The list
# ---------------------------------------------------------------------------------------------


def test_list_filters_by_status_and_counts_each(client, engine):
    for name in ("first", "second", "third"):
        submit(client, name=name)
    train(engine, 1, 4, batch=5)
    client.post("/jobs/3/cancel")

    everything = page(client, "/")
    assert re.search(r'aria-current="page">all <span class="count">3</span>', everything)
    assert 'queued <span class="count">1</span>' in everything
    assert 'running <span class="count">1</span>' in everything
    assert 'cancelled <span class="count">1</span>' in everything

    running = page(client, "/?status=running")
    assert ">first<" in running and ">second<" not in running and ">third<" not in running
    assert '<progress max="100" value="38"' in running  # (1 epoch + 5/10 batches) of 4
    assert "38% · epoch 1/4" in running


def test_list_searches_names_and_tags(client):
    submit(client, name="baseline-lr", tags=["sweep", "cifar"])
    submit(client, name="other", tags=["Sweep-2"])
    submit(client, name="100%_done")

    by_name = page(client, "/?q=BASELINE")
    assert ">baseline-lr<" in by_name and ">other<" not in by_name

    by_tag = page(client, "/?q=sweep")
    assert ">baseline-lr<" in by_tag and ">other<" in by_tag and "100%_done" not in by_tag
    assert 'value="sweep"' in by_tag  # the search stays in its box

    # LIKE's wildcards in the search are literal characters.
    assert ">100%_done<" in page(client, "/?q=%25_")
    assert "No jobs match" in page(client, "/?q=_x")

    assert "No queued jobs match “sweep”" not in page(client, "/?q=sweep&status=queued")
    assert "No running jobs match “sweep”" in page(client, "/?q=sweep&status=running")


def test_list_pages_keep_the_filters(client):
    for index in range(5):
        submit(client, name=f"paged-{index}", tags=["pages"])
    first = page(client, "/?q=pages&limit=2")
    assert first.count('name="ids"') == 2
    assert "1–2 of 5" in first
    assert 'href="/?q=pages&amp;offset=2&amp;limit=2" id="older" rel="next"' in first
    last = page(client, "/?q=pages&limit=2&offset=4")
    assert ">paged-0<" in last and 'rel="next"' not in last
    assert 'href="/?q=pages&amp;offset=2&amp;limit=2" id="newer" rel="prev"' in last


def test_list_rows_have_compare_checkboxes_duration_and_wandb(client, engine):
    submit(client, name="done")
    claim = train(engine, 2, 2)
    queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": 30.0, "test_loss": 1.8})
    listing = page(client, "/")
    assert 'type="checkbox" id="select-1" name="ids" value="1" form="compare-form"' in listing
    assert 'aria-label="Select job 1 (done) to compare"' in listing
    assert "30.00%" in listing and "2/2 epochs" in listing
    assert re.search(r"<td>\d+s</td>\s*</tr>", listing)  # duration
    assert re.search(r'title="[\d-]+ [\d:]+\+00:00">\d+s ago</time>', listing)


def test_the_list_updates_live_from_a_fragment_of_the_same_query(client, engine):
    submit(client, name="sweep-a", tags=["sweep"])
    submit(client, name="other")
    listing = page(client, "/?q=sweep&status=queued")
    assert 'data-live-src="/live?status=queued&amp;q=sweep"' in listing
    assert "<title>1 queued jobs matching “sweep” · trainboard</title>" in listing

    fragment = client.get("/live?status=queued&q=sweep")
    assert fragment.status_code == 200 and fragment.headers["cache-control"] == "no-store"
    assert "<html" not in fragment.text and "<body" not in fragment.text
    top_level_ids = fragment_ids(fragment.text)
    assert top_level_ids == ["live-state", "status-counts", "results"]
    for element_id in top_level_ids:
        assert f'id="{element_id}"' in listing
    assert '<tr id="job-1">' in fragment.text and 'id="job-2"' not in fragment.text
    assert 'data-title="1 queued jobs matching “sweep” · trainboard"' in fragment.text

    # A job that starts running changes its own row and the counts; the list's fragment shows it.
    train(engine, 1, 4, batch=5)
    assert "No queued jobs match “sweep”" in client.get("/live?status=queued&q=sweep").text
    running = client.get("/live").text
    assert re.search(r'<tr id="job-1">.*?<span class="badge running">running</span>', running, re.S)
    assert 'running <span class="count">1</span>' in running
    assert client.get("/live?limit=0").status_code == 422


# ---------------------------------------------------------------------------------------------
# A job's page and its live fragment
# ---------------------------------------------------------------------------------------------


def test_running_job_page_has_progress_eta_and_charts(client, engine):
    submit(client, name="live-one", epochs=5)
    train(engine, 3, 5, batch=4)
    html = page(client, "/jobs/1")

    assert 'data-live-src="/jobs/1/live"' in html
    assert '<script src="/static/dashboard.js" defer></script>' in html
    assert "<script>" not in html and "http-equiv=\"refresh\" content=\"5\"" not in html
    assert '<progress id="progress" max="100" value="68"' in html
    # 1.6 epochs left (epoch 4 is at batch 4 of 10) at 30 s an epoch.
    assert "about 48s left" in html
    assert '<dd id="images-per-second">903</dd>' in html

    assert chart_titles(html, "test-accuracy-chart") == ["epoch 1: 25.00%", "epoch 2: 30.00%", "epoch 3: 35.00%"]
    assert chart_titles(html, "test-loss-chart")[-1] == "epoch 3: 1.7000"
    assert chart_titles(html, "train-loss-chart")[0] == "epoch 1: 2.0000"
    assert chart_titles(html, "train-loss-steps-chart")[:2] == ["batch 5: 2.1500", "batch 10: 2.1000"]
    assert 'Cancel job #1 (live-one)? Its training stops now.' in html


def test_live_fragment_is_the_changing_part_of_the_page(client, engine):
    submit(client, name="fragment")
    claim = train(engine, 1, 2, batch=5)
    fragment = client.get("/jobs/1/live")
    assert fragment.status_code == 200 and fragment.headers["cache-control"] == "no-store"
    assert "<html" not in fragment.text and "<body" not in fragment.text
    assert '<span id="live-state" data-active="true" data-title="fragment (running) · trainboard" hidden>' in fragment.text
    top_level_ids = fragment_ids(fragment.text)
    assert top_level_ids == [
        "live-state", "job-header", "problems", "summary", "charts", "examples-section", "artifacts-section",
        "epochs-section", "params-section", "log-section",
    ]
    full = page(client, "/jobs/1")
    for element_id in top_level_ids:
        assert f'id="{element_id}"' in full

    queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": 25.0}, artifacts=[{"name": "model.pth", "size": 2048}])
    finished = client.get("/jobs/1/live").text
    assert 'data-active="false"' in finished
    assert '<a href="/jobs/1/artifacts/model.pth" download>model.pth</a>' in finished
    assert "data-live-src" not in page(client, "/jobs/1")
    assert client.get("/jobs/99/live").status_code == 404


def test_log_tail_is_shown_and_trimmed_to_whole_lines(client, settings):
    submit(client, name="chatty")
    log_dir = settings.job_dir(1)
    log_dir.mkdir(parents=True)
    lines = [f"line {index:06d} " + "x" * 50 for index in range(1000)]
    (log_dir / "job.log").write_text("\n".join(lines) + "\n")
    html = page(client, "/jobs/1")
    tail = re.search(r'<pre class="log" id="log-tail"[^>]*>(.*?)</pre>', html, re.S).group(1)
    assert tail.endswith(lines[-1] + "\n")
    assert tail.split("\n", 1)[0] in lines  # no half line at the top
    assert 'href="/jobs/1/log">Full log' in html


def test_failed_job_shows_its_reason_first_and_offers_retry(client, engine, settings):
    submit(client, name="doomed")
    claim = train(engine, 0, 2)
    settings.job_dir(1).mkdir(parents=True)
    (settings.job_dir(1) / "job.log").write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    queue.finish(engine, claim, "failed", error="RuntimeError: out of memory")
    html = page(client, "/jobs/1")
    main = html[html.index("<main"):]
    assert main.index('id="error"') < main.index('id="summary"')
    assert "<strong>Failed:</strong> RuntimeError: out of memory" in html
    assert '<a href="#log">The log below</a> has the traceback.' in html
    assert 'action="/jobs/1/retry"' in html and 'action="/jobs/1/cancel"' not in html
    assert "Traceback (most recent call last)" in html

    retried = client.post("/jobs/1/retry", headers=HTML, follow_redirects=False)
    assert retried.status_code == 303 and retried.headers["location"] == "/jobs/2"
    assert 'retry of <a href="/jobs/1">#1</a>' in page(client, "/jobs/2")


def test_offline_run_has_its_sync_command_with_a_copy_button(client, engine):
    submit(client, name="offline")
    claim = train(engine, 1, 1)
    queue.record_wandb(engine, claim, mode="offline", url=None, run_id="abc", run_dir="/runs/offline-run-abc", note=None)
    html = page(client, "/jobs/1")
    assert '<code id="sync-command">wandb sync /runs/offline-run-abc</code>' in html
    assert '<button type="button" class="copy" data-copy-target="sync-command">Copy</button>' in html


def test_queued_job_can_be_cancelled_from_its_page(client):
    submit(client, name="waiting")
    html = page(client, "/jobs/1")
    assert 'action="/jobs/1/cancel"' in html and "Cancel job #1 (waiting)?" in html
    assert "Its training stops now" not in html  # nothing runs yet
    response = client.post("/jobs/1/cancel", headers=HTML, follow_redirects=False)
    assert response.status_code == 303
    after = page(client, "/jobs/1")
    assert 'class="badge cancelled" id="status"' in after and 'action="/jobs/1/retry"' in after


def test_a_queued_job_page_says_where_it_stands_and_why_it_waits(client):
    submit(client, name="waiting")
    html = page(client, "/jobs/1")
    assert '<dd id="queue-position">position 1</dd>' in html
    assert "<strong>Waiting:</strong> no worker is alive; start one with `trainboard worker`" in html
    client.post("/jobs/1/cancel", headers=HTML)
    html = page(client, "/jobs/1")
    assert 'id="queue-position"' not in html and 'id="waiting-reason"' not in html


def test_a_finished_job_can_be_deleted_from_its_page_after_a_question(client, settings):
    submit(client, name="short-lived")
    assert 'action="/jobs/1/delete"' not in page(client, "/jobs/1")  # queued: cancel it first
    client.post("/jobs/1/cancel", headers=HTML)
    html = page(client, "/jobs/1")
    assert 'action="/jobs/1/delete" data-confirm="Delete job #1 (short-lived)? Its model, log, metrics and W&amp;B run' in html
    settings.job_dir(1).mkdir(parents=True)
    response = client.post("/jobs/1/delete", headers=HTML, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert client.get("/jobs/1", headers=HTML).status_code == 404
    assert not settings.job_dir(1).exists()
    assert "short-lived" not in page(client, "/")


def test_name_tags_and_notes_are_edited_on_the_job_page(client):
    submit(client, name="first-name", tags=["a"])
    html = page(client, "/jobs/1")
    assert 'id="notes"' not in html
    assert '<form class="edit-form" id="edit-form" method="post" action="/jobs/1/edit"' in html
    assert 'name="name" value="first-name"' in html and 'name="tags" value="a"' in html
    assert '<a class="button" href="#edit-form">Edit</a>' in html
    form = {"name": "second-name", "tags": "b, c", "notes": "line one\r\n\tline two"}
    response = client.post("/jobs/1/edit", data=form, headers=HTML, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/jobs/1"
    html = page(client, "/jobs/1")
    assert '<dd id="notes" class="notes">line one\n\tline two</dd>' in html
    assert "<h1>second-name</h1>" in html and "<dt>tags</dt><dd>b, c</dd>" in html
    assert '>line one\n\tline two</textarea>' in html

    refused = client.post("/jobs/1/edit", data={"name": "", "tags": "b", "notes": "typed <b>"}, headers=HTML)
    assert refused.status_code == 422
    assert '<details open>' in refused.text and 'aria-invalid="true"' in refused.text
    assert '<p class="error" id="edit-name-error">String should have at least 1 character</p>' in refused.text
    assert ">typed &lt;b&gt;</textarea>" in refused.text
    assert "<h1>second-name</h1>" in page(client, "/jobs/1")


def test_hyperparameters_read_as_typed(client):
    submit(client, name="params", tags=["a", "b"], pretrained=False)
    html = page(client, "/jobs/1")
    assert "<dt>pretrained</dt><dd>false</dd>" in html
    assert "<dt>tags</dt><dd>a, b</dd>" in html
    assert "<dt>wandb_entity</dt><dd>default</dd>" in html


def test_job_page_with_many_epochs_folds_the_table_and_thins_the_step_chart(client, engine):
    submit(client, name="long", epochs=400)
    claim = queue.claim(engine, "test-worker", 60)
    points = []
    for epoch in range(1, 401):
        values = {"epoch": epoch, "test_accuracy": 50.0, "test_loss": 1.0, "train_loss": 1.0,
                  "train_images_per_second": 1000.0, "epoch_seconds": 1.0}
        points += [("epoch", epoch, values), ("train", epoch, {"epoch": epoch, "batch": 1, "train_loss": 1.0 / epoch})]
    queue.record_progress(engine, claim, progress={"epoch": 400, "epochs": 400, "batch": 1, "batches": 1}, points=points)
    html = page(client, "/jobs/1")
    assert "<details >" in html.replace("<details open>", "OPEN")
    assert len(chart_titles(html, "test-accuracy-chart")) == 400
    steps = chart_titles(html, "train-loss-steps-chart")
    assert len(steps) == 200 and steps[0] == "batch 1–2 (mean of 2): 0.7500"


def test_a_live_refresh_sums_only_the_train_loss_points_that_arrived(client, engine):
    """The page of a running job is polled every two seconds: a look sums the points that arrived
    since the last one (and its last bucket again), not the whole history. The work is counted in
    SQLite's virtual-machine steps, which do not depend on the machine's speed."""
    submit(client, name="long-run", epochs=1000)
    claim = queue.claim(engine, "test-worker", 60)

    def report(first: int, last: int) -> None:
        assert queue.record_progress(
            engine, claim, progress={"epoch": 0, "epochs": 1000, "batch": last, "batches": 100_000},
            points=[("train", step, {"train_loss": 1.0 + step % 7}) for step in range(first, last + 1)],
        )

    def covered(html: str) -> tuple[int, int]:
        """How many points the chart's buckets hold, and the last step they reach; the last
        bucket's mean checked against the points in it."""
        titles = chart_titles(html, "train-loss-steps-chart")
        counts = [int(match.group(1)) if (match := re.search(r"mean of (\d+)", t)) else 1 for t in titles]
        first, last, count, mean = re.fullmatch(r"batch (\d+)(?:–(\d+) \(mean of (\d+)\))?: ([\d.]+)", titles[-1]).groups()
        steps = range(int(first), int(last or first) + 1)
        assert int(count or 1) == len(steps) and mean == f"{sum(1.0 + step % 7 for step in steps) / len(steps):.4f}"
        return sum(counts), steps[-1]

    work = [0]

    def count_steps() -> int:
        work[0] += 1
        return 0

    def install(dbapi_connection, _record, _proxy):
        dbapi_connection.set_progress_handler(count_steps, 1000)

    event.listen(engine, "checkout", install)
    try:
        report(1, 60_000)
        assert covered(page(client, "/jobs/1")) == (60_000, 60_000)
        cold, work[0] = work[0], 0
        report(60_001, 60_100)
        assert covered(page(client, "/jobs/1/live")) == (60_100, 60_100)
        refresh = work[0]
    finally:
        event.remove(engine, "checkout", install)
    assert refresh * 20 < cold, (refresh, cold)


def test_a_diverged_run_with_nan_losses_still_has_its_charts(client, engine):
    submit(client, name="diverged")
    claim = queue.claim(engine, "test-worker", 60)
    losses = [2.0, 5.0, float("nan"), float("inf")]
    queue.record_progress(engine, claim, progress={"epoch": 0, "epochs": 5, "batch": 4, "batches": 8}, points=[
        ("train", step, {"epoch": 1, "batch": step, "train_loss": loss}) for step, loss in enumerate(losses, start=1)
    ])
    assert chart_titles(page(client, "/jobs/1"), "train-loss-steps-chart") == ["batch 1: 2.0000", "batch 2: 5.0000"]


# ---------------------------------------------------------------------------------------------
# The form
# ---------------------------------------------------------------------------------------------


def test_clone_prefills_the_form_without_the_name(client):
    submit(client, name="original", lr=0.05, epochs=3, dataset="synthetic", pretrained=False, tags=["x", "y"])
    form = page(client, "/jobs/new?clone=1")
    assert 'Cloned from <a href="/jobs/1">#1 original</a>' in form
    assert 'name="lr" value="0.05"' in form and 'name="epochs" value="3"' in form
    assert 'name="tags" value="x, y"' in form
    assert '<option value="synthetic" selected>' in form
    assert 'id="pretrained" name="pretrained"  aria-describedby' in form  # unchecked
    assert 'name="name" value=""' in form
    assert "There is no job #42 to clone" in page(client, "/jobs/new?clone=42", 404)


def test_presets_refill_the_form_and_are_submitted_with_it(client):
    presets = forms.form_presets()
    if not presets:
        pytest.skip("JobCreate has no presets")
    name, values = next((name, values) for name, values in presets.items() if name != "tutorial")
    form = page(client, f"/jobs/new?preset={name}")
    assert f'href="/jobs/new?preset={name}" aria-current="true">{name}</a>' in form
    assert f'<input type="hidden" name="preset" value="{name}">' in form
    assert f'name="lr" value="{values["lr"]}"' in form and f'name="batch_size" value="{values["batch_size"]}"' in form
    assert '<input type="hidden" name="preset" value="tutorial">' in page(client, "/jobs/new")

    response = client.post("/jobs/new", data={**values, "name": "from-a-preset"}, follow_redirects=False)
    assert response.status_code == 303
    job = client.get(response.headers["location"]).json()
    assert job["params"]["preset"] == name
    assert str(job["params"]["lr"]) == values["lr"] and str(job["params"]["batch_size"]) == values["batch_size"]
    assert f'<input type="hidden" name="preset" value="{name}">' in page(client, f"/jobs/new?clone={job['id']}")


def test_form_states_each_bound_and_marks_errors_for_assistive_technology(client):
    form = page(client, "/jobs/new")
    for name, bounds in (("lr", "more than 0, at most 10"), ("momentum", "at least 0, less than 1"),
                         ("batch_size", "1 to 4096")):
        assert re.search(rf'<small id="{name}-help" class="help">[^<]*\({bounds}\)</small>', form), name
    response = client.post("/jobs/new", data={"epochs": "0", "name": "keep"}, headers=HTML)
    assert response.status_code == 422
    assert 'aria-describedby="epochs-help epochs-error" aria-invalid="true"' in response.text
    assert 'Fix the field marked below: <a href="#epochs">epochs</a>' in response.text


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------


def test_compare_overlays_curves_and_highlights_differences(client, engine):
    submit(client, name="low-lr", lr=0.01, epochs=2)
    submit(client, name="high-lr", lr=0.1, epochs=2)
    first = train(engine, 2, 2, accuracy_step=5)
    queue.finish(engine, first, "succeeded", metrics={"test_accuracy": 30.0, "test_loss": 1.8})
    second = train(engine, 2, 2, accuracy_step=10)
    queue.finish(engine, second, "succeeded", metrics={"test_accuracy": 40.0, "test_loss": 1.8})

    html = page(client, "/compare?ids=1&ids=2")
    accuracy = chart_titles(html, "test-accuracy-chart")
    assert accuracy == ["#1 low-lr, epoch 1: 25.00%", "#1 low-lr, epoch 2: 30.00%",
                        "#2 high-lr, epoch 1: 30.00%", "#2 high-lr, epoch 2: 40.00%"]
    assert '<g class="series series-0">' in html and '<g class="series series-1">' in html
    assert re.search(r'<tr class="differs">\s*<th scope="row"><span class="marker" aria-hidden="true">≠</span>'
                     r'<span class="visually-hidden">differs: </span>lr</th>\s*<td>0.01</td><td>0.1</td>', html)
    assert re.search(r"<tr>\s*<th scope=\"row\">epochs</th>", html)  # equal: not highlighted
    assert '<td class="best">40.00%' in html and "<td>30.00%</td>" in html
    assert page(client, "/compare?ids=2,1").count('class="differs"') == html.count('class="differs"')


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("", 400, "Pick 2 to 10 jobs to compare; 0 given."),
        ("?ids=1", 400, "Pick 2 to 10 jobs to compare; 1 given."),
        ("?ids=1&ids=1", 400, "Pick 2 to 10 jobs to compare; 1 given."),
        ("?ids=" + ",".join(str(i) for i in range(1, 12)), 400, "Pick 2 to 10 jobs to compare; 11 given."),
        ("?ids=1&ids=abc", 400, "&#39;abc&#39; is not a job id."),
        ("?ids=1&ids=77", 404, "No job #77."),
    ],
)
def test_compare_refuses_what_it_cannot_show(client, query, status, message):
    submit(client, name="only")
    assert message in page(client, "/compare" + query, status)


def test_a_diverged_job_with_missing_metrics_still_renders(client, engine):
    first, second = submit(client, name="diverged"), submit(client, name="other")
    claim = queue.claim(engine, "test-worker", 60)
    missing = {"epoch": 1, "test_accuracy": 10.0, "test_loss": None, "train_loss": None,
               "train_images_per_second": 800.0, "epoch_seconds": 3.0}
    assert queue.record_progress(
        engine, claim, progress={"epoch": 1, "epochs": 2, "batch": 4, "batches": 4}, metrics=missing,
        points=[("train", 4, {"epoch": 1, "batch": 4, "train_loss": None}), ("epoch", 1, missing)],
    )
    html = page(client, f"/jobs/{first['id']}")
    assert "\u2014" in html and "10.00%" in html
    page(client, f"/jobs/{first['id']}/live")
    page(client, "/")
    page(client, f"/compare?ids={first['id']},{second['id']}")


# ---------------------------------------------------------------------------------------------
# The form's sections, labels and the speeds its summary estimates from
# ---------------------------------------------------------------------------------------------


def test_form_groups_its_fields_with_labels_and_folds_advanced(client):
    form = page(client, "/jobs/new")
    sections = re.findall(r'<(fieldset|details) class="field-group" id="group-(\w+)"(?: open)?>', form)
    assert sections == [("fieldset", "tutorial"), ("fieldset", "recipe"), ("fieldset", "wandb"), ("details", "advanced")]
    assert "<legend>The tutorial&#39;s settings</legend>" in form and "<summary>Advanced</summary>" in form
    assert '<details class="field-group" id="group-advanced">' in form  # folded
    assert '<label for="lr">Learning rate <code class="field-name">lr</code></label>' in form

    def section_of(name: str) -> str:
        before = form[: form.index(f'name="{name}"')]
        return re.findall(r'id="group-(\w+)"', before)[-1]

    assert [section_of(name) for name in ("batch_size", "lr", "seed", "use_cuda", "dataset", "train_subset", "tags")] == ["tutorial"] * 7
    assert [section_of(name) for name in ("optimizer", "lr_schedule", "augment", "precision", "tta")] == ["recipe"] * 5
    assert [section_of(name) for name in ("wandb_project", "wandb_entity", "wandb_mode")] == ["wandb"] * 3
    assert [section_of(name) for name in ("compile", "channels_last", "wandb_watch_freq")] == ["advanced"] * 3
    assert sum(len(group["fields"]) for group in forms.form_groups()) == len(forms.form_fields())

    # A bad value in a folded section opens it, beside the field's message.
    refused = client.post("/jobs/new", data={"compile": "sometimes", "epochs": "2"}, headers=HTML)
    assert refused.status_code == 422
    assert '<details class="field-group" id="group-advanced" open>' in refused.text
    assert 'id="compile-error"' in refused.text


def form_speeds(client) -> dict:
    form = page(client, "/jobs/new")
    raw = re.search(r'id="form-summary"[^>]* data-speeds="([^"]*)"', form).group(1)
    return json.loads(unescape(raw))


def test_form_estimates_from_the_last_succeeded_job_of_the_same_model_data_and_device(client, engine):
    queue.register_worker(engine, Worker(id="gpu-host", host="gpu", pid=1, slots=[{"index": 0, "device": "cuda:0"}]))
    queue.register_worker(engine, Worker(id="laptop", host="laptop", pid=2, slots=[{"index": 0, "device": "cpu"}]))

    def finished(worker_id: str, images_per_second: float, status: str = "succeeded", **params) -> int:
        job = submit(client, **params)
        claim = queue.claim(engine, worker_id, 60)
        assert claim.job_id == job["id"]
        queue.finish(engine, claim, status, metrics={"train_images_per_second": images_per_second})
        return job["id"]

    assert form_speeds(client) == {}
    older = finished("gpu-host", 1000.0)
    newer = finished("gpu-host", 2000.0)
    finished("gpu-host", 9999.0, status="failed")
    # Asked for the GPU, but its worker had none: a CPU speed.
    on_cpu = finished("laptop", 30.0, dataset="synthetic")
    by_choice = finished("gpu-host", 40.0, use_cuda=False, model="resnet18_cifar")

    speeds = form_speeds(client)
    assert older != newer
    assert speeds == {
        "resnet18/cifar10/gpu": {"images_per_second": 2000.0, "job_id": newer},
        "resnet18/synthetic/cpu": {"images_per_second": 30.0, "job_id": on_cpu},
        "resnet18_cifar/cifar10/cpu": {"images_per_second": 40.0, "job_id": by_choice},
    }
    assert 'data-train-images="{&#34;cifar10&#34;: 50000, &#34;synthetic&#34;: 10000}"' in page(client, "/jobs/new")


# ---------------------------------------------------------------------------------------------
# Progress counts the epoch in progress
# ---------------------------------------------------------------------------------------------


def progress_text(client, job_id: int) -> str:
    return re.search(r'<span id="progress-text">(.*?)</span>\s*</dd>', page(client, f"/jobs/{job_id}"), re.S).group(1)


def test_progress_counts_the_epoch_in_progress(client, engine):
    submit(client, name="counting", epochs=2)
    assert progress_text(client, 1).startswith("0% · not started")
    claim = queue.claim(engine, "test-worker", 60)
    assert progress_text(client, 1).startswith("0% · starting")

    def report(epoch: int, batch: int) -> str:
        assert queue.record_progress(engine, claim, progress={"epoch": epoch, "epochs": 2, "batch": batch, "batches": 16})
        return progress_text(client, 1)

    assert report(0, 10).startswith("31% · epoch 1/2 · batch 10/16")
    # The first epoch's last batch, reported before its evaluation: still the first epoch.
    assert report(0, 16).startswith("0% · epoch 1/2 · batch 16/16")
    assert report(1, 16).startswith("50% · epoch 1/2 done")
    assert report(1, 4).startswith("62% · epoch 2/2 · batch 4/16")
    listing = page(client, "/")
    assert '<span class="small" title="epoch 2/2 · batch 4/16">62% · epoch 1/2 done</span>' in listing

    report(2, 16)
    queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": 50.0})
    assert progress_text(client, 1) == "100% · epoch 2/2"


def test_offline_run_names_the_trainboard_sync_command(client, engine):
    submit(client, name="offline")
    claim = train(engine, 1, 1)
    queue.record_wandb(engine, claim, mode="offline", url=None, run_id="abc", run_dir="/runs/offline-run-abc", note=None)
    assert "once the job has finished" in page(client, "/jobs/1")
    queue.finish(engine, claim, "succeeded")
    html = page(client, "/jobs/1")
    assert "to upload it, on the worker's host:" in html
    assert '<code id="trainboard-sync">trainboard sync --job 1</code>' in html and "once the job has finished" not in html

    assert queue.record_synced(engine, 1, url="https://wandb.ai/lab/thorough-pytorch/runs/abc")
    html = page(client, "/jobs/1")
    assert '<a href="https://wandb.ai/lab/thorough-pytorch/runs/abc" rel="noopener">' in html and "trainboard sync" not in html


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------

SWEEP_YAML = """\
name: lr-search
method: random
metric: {name: test_accuracy, goal: maximize}
run_cap: 4
parallel: 3
seed: 7
parameters:
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}
  batch_size: {values: [32, 64]}
  epochs: {value: 3}
  dataset: {value: synthetic}
early_terminate: {type: hyperband, min_iter: 1, eta: 3}
"""


GRID_YAML = """\
name: grid-search
method: grid
parameters:
  batch_size: {values: [32, 64]}
  dataset: {value: synthetic}
"""


def start_sweep(client: TestClient, config: str = SWEEP_YAML) -> dict:
    response = client.post("/sweeps", content=config, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    return response.json()


def run_trial(engine, accuracies: list[float], ending: str | None = None, epochs: int = 3) -> int:
    """Claim the next queued trial and report one epoch per accuracy as a worker does; then end it
    `succeeded`, or `pruned` at its last epoch, or leave it running. Its job's id."""
    claim = queue.claim(engine, "test-worker", 60)
    assert claim is not None and claim.sweep_id is not None
    for epoch, accuracy in enumerate(accuracies, 1):
        metrics = {
            "epoch": epoch, "test_accuracy": accuracy, "test_loss": 1.0, "train_loss": 1.1,
            "train_images_per_second": 900.0, "epoch_seconds": 30.0,
        }
        assert queue.record_progress(
            engine, claim, progress={"epoch": epoch, "epochs": epochs, "batch": 10, "batches": 10},
            metrics=metrics, points=[("epoch", epoch, metrics)],
        )
    if ending == "succeeded":
        queue.finish(engine, claim, "succeeded", metrics=metrics)
    elif ending == "pruned":
        epoch = len(accuracies)
        message = f"pruned by hyperband at epoch {epoch} (rung 0, eta 3): test_accuracy {accuracies[-1]:.4g} was not in the best 1/3"
        pruned = {"rule": "hyperband", "epoch": epoch, "rung": 0, "value": accuracies[-1], "message": message}
        queue.finish(engine, claim, "pruned", metrics=metrics, pruned=pruned)
    return claim.job_id


def form_config(html: str) -> str:
    return unescape(re.search(r'<textarea id="config" name="config"[^>]*>(.*?)</textarea>', html, re.S).group(1))


def trial_rows(html: str) -> list[str]:
    """The trials table's rows, in order, as their text."""
    body = re.search(r'<tbody id="trial-rows">(.*?)</tbody>', html, re.S).group(1)
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in re.findall(r"<tr .*?</tr>", body, re.S)]


def test_the_sweep_list_shows_progress_the_best_so_far_and_status(client, engine):
    empty = page(client, "/sweeps")
    assert 'id="no-sweeps"' in empty and 'href="/sweeps/new"' in empty
    assert '<a href="/sweeps" aria-current="page">Sweeps</a>' in empty

    first = start_sweep(client)
    second = start_sweep(client, GRID_YAML)
    best = run_trial(engine, [40.0, 50.0, 61.25], "succeeded")
    run_trial(engine, [30.0], "pruned")
    client.post(f"/sweeps/{second['id']}/cancel")

    html = page(client, "/sweeps")
    rows = re.findall(r'<tr id="sweep-(\d+)">(.*?)</tr>', html, re.S)
    assert [int(sweep_id) for sweep_id, _ in rows] == [second["id"], first["id"]]  # newest first
    newest, oldest = (" ".join(unescape(re.sub(r"<[^>]+>", " ", row)).split()) for _, row in rows)
    assert newest.startswith(f"{second['id']} cancelled grid-search grid Test Accuracy (maximize)")
    assert "2/2 trials none yet" in newest  # a grid over batch_size: two points, both cancelled
    assert oldest.startswith(f"{first['id']} running lr-search random Test Accuracy (maximize)")
    assert "2/4 trials 61.25%" in oldest
    assert f'<a href="/jobs/{best}" title="job #{best}">61.25%</a>' in html
    assert '<progress max="4" value="2"' in html


def test_the_form_starts_the_sweep_it_shows_and_its_page_lists_the_trials(client):
    html = page(client, "/sweeps/new")
    assert 'enctype="multipart/form-data"' in html and 'name="csrf_token"' in html
    assert 'name="config_file"' in html and 'type="file"' in html
    example = form_config(html)
    assert example.startswith("name: lr-search\nmethod: random\n")

    response = client.post("/sweeps/new", data={"config": example}, headers=HTML, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/sweeps/1"
    sweep = client.get("/sweeps/1").json()
    assert sweep["name"] == "lr-search" and sweep["trials"] == 2  # parallel 2 of run_cap 8

    html = page(client, "/sweeps/1")
    assert '<span class="badge running" id="status">running</span>' in html
    assert 'data-live-src="/sweeps/1/live"' in html and 'data-live-subject="Sweep"' in html
    assert 'action="/sweeps/1/cancel"' in html and 'href="/sweeps/new?from=1"' in html
    assert '<span id="progress-text">0/8 trials done · 2 queued</span>' in html
    rows = trial_rows(html)
    assert [row.split()[:2] for row in rows] == [["trial", "0"], ["trial", "1"]]
    assert all("queued" in row for row in rows)
    assert "None yet: no trial has finished" in html
    assert '<p class="muted chart-empty" id="sweep-metric-chart">No points yet.</p>' in html


@pytest.mark.parametrize(
    ("config", "keys", "message"),
    [
        ("method: grid\nparameters:\n  foo: {values: [1]}\n  lr: {min: 0.1, max: 0.2}\n",
         ["parameters.foo", "parameters.lr"], "grid needs values (or an int_uniform range), not a uniform distribution"),
        ("method: random\nparameters:\n  lr: {min: 0.1, max: 0.2}\n", ["run_cap"], "a random sweep needs run_cap (1 to 1000)"),
        ("method: bayes\nrun_cap: 3\nmetric: {name: accuracy}\nparameters:\n  lr: {min: 0.1, max: 0.2}\n",
         ["metric.name"], "`accuracy` is not a job metric"),
        ("method: random\nrun_cap: 2\nparameters:\n  epochs: {min: 0, max: 3}\n", ["parameters.epochs.min"], "greater than or equal to 1"),
        ("method: random\nparameters: [\n", [None], "not valid YAML at line 3 column 1"),
        ('{"method": "random", "run_cap": 2, "parameters": {"momentum": {"values": [0.5, 1.5]}}}',
         ["parameters.momentum.values.1"], "less than 1"),
        ("   \n", [None], "The config is empty"),
    ],
)
def test_a_config_that_does_not_hold_is_shown_again_with_each_offending_key(client, config, keys, message):
    response = client.post("/sweeps/new", data={"config": config}, headers=HTML)
    assert response.status_code == 422
    html = response.text
    assert "The sweep was not started." in html and 'aria-invalid="true"' in html
    errors = re.findall(r"<li>(?:<code class=\"error-key\">(.*?)</code>: )?(.*?)</li>", html)
    assert [key or None for key, _ in errors] == keys
    assert message in unescape(" ".join(text for _, text in errors))
    assert form_config(html) == config  # kept as typed, to fix
    assert client.get("/sweeps").json()["total"] == 0


def test_a_chosen_config_file_is_used_instead_of_the_text_area(client):
    upload = ("sweep.json", b'{"name": "from-a-file", "method": "random", "run_cap": 2, "parameters": {"lr": {"min": 1e-3, "max": 1e-1}}}')
    response = client.post(
        "/sweeps/new", data={"config": "not: [a config"}, files={"config_file": upload}, headers=HTML, follow_redirects=False,
    )
    assert response.status_code == 303
    assert client.get(response.headers["location"]).json()["name"] == "from-a-file"

    # An empty file leaves the text area's config in charge; a binary one is refused by its name.
    empty = client.post("/sweeps/new", data={"config": SWEEP_YAML}, files={"config_file": ("none.yaml", b"")}, follow_redirects=False)
    assert empty.status_code == 303
    binary = client.post("/sweeps/new", data={"config": ""}, files={"config_file": ("weights.bin", b"\xff\xfe\x00")}, headers=HTML)
    assert binary.status_code == 422 and "weights.bin is not UTF-8 text" in binary.text
    assert client.get("/sweeps").json()["total"] == 2


def test_the_sweep_page_ranks_trials_by_the_metric_and_charts_each(client, engine):
    sweep = start_sweep(client)
    second_best = run_trial(engine, [40.0, 50.0, 55.0], "succeeded")
    pruned = run_trial(engine, [20.0], "pruned")
    running = run_trial(engine, [30.0, 35.0])
    html = page(client, f"/sweeps/{sweep['id']}")
    jobs = {trial["id"]: trial for trial in client.get(f"/sweeps/{sweep['id']}").json()["jobs"]}

    rows = trial_rows(html)
    assert [row.split()[1] for row in rows] == [str(jobs[job_id]["trial_number"]) for job_id in (second_best, pruned, running)]
    assert "succeeded 55.00% ★ best 3" in rows[0]
    assert "pruned at epoch 1 20.00% 1" in rows[1]
    assert "running 2" in rows[2]
    lr = jobs[second_best]["params"]["lr"]
    assert f'<td title="{lr}">{lr:.4g}</td>' in html  # short in the table, whole on hover
    assert f'<tr id="trial-{second_best}" class="best">' in html
    assert 'class="swatch series-1 pruned"' in html

    best_section = re.search(r'<section id="best-section".*?</section>', html, re.S).group(0)
    assert f'<a href="/jobs/{second_best}">trial {jobs[second_best]["trial_number"]} (job #{second_best})</a>' in best_section
    assert '<strong id="best-value">55.00%</strong>' in best_section
    assert f"<dt>lr</dt><dd>{lr}</dd>" in best_section and "<dt>batch_size</dt>" in best_section

    # One line per trial, best first; the pruned one dashed and cut short at its epoch.
    assert re.findall(r'<g class="(series [^"]*)">', html) == ["series series-0", "series series-1 pruned", "series series-2"]
    pruned_label = f"trial {jobs[pruned]['trial_number']} (pruned at epoch 1)"
    assert chart_titles(html, "sweep-metric-chart") == [
        *(f"trial {jobs[second_best]['trial_number']}, epoch {e}: {v}" for e, v in ((1, "40.00%"), (2, "50.00%"), (3, "55.00%"))),
        f"{pruned_label}, epoch 1: 20.00%",
        *(f"trial {jobs[running]['trial_number']}, epoch {e}: {v}" for e, v in ((1, "30.00%"), (2, "35.00%"))),
    ]
    # Each swept parameter against the metric: the scored trials, the best and the pruned marked.
    lr_chart = re.search(r'<svg class="chart" id="param-lr-chart".*?</svg>', html, re.S).group(0)
    dots = re.findall(r'<circle class="(dot[^"]*)"[^>]*><title>(.*?)</title>', lr_chart)
    assert sorted(dots) == sorted([
        ("dot best", f"trial {jobs[second_best]['trial_number']}: lr {lr:.4g}, test_accuracy 55.00%"),
        ("dot pruned", f"{pruned_label}: lr {jobs[pruned]['params']['lr']:.4g}, test_accuracy 20.00%"),
    ])
    assert ">lr (log scale)</text>" in lr_chart and ">0.01</text>" in lr_chart
    batch_chart = re.search(r'<svg class="chart" id="param-batch_size-chart".*?</svg>', html, re.S).group(0)
    assert len(re.findall("<circle", batch_chart)) == 2


def test_the_sweep_page_follows_a_running_sweep_from_its_fragment(client, engine):
    sweep = start_sweep(client)
    fragment = client.get(f"/sweeps/{sweep['id']}/live")
    assert fragment.status_code == 200 and fragment.headers["cache-control"] == "no-store"
    assert "<html" not in fragment.text
    top_level_ids = fragment_ids(fragment.text)
    assert top_level_ids == ["live-state", "sweep-header", "problems", "summary", "best-section", "sweep-charts", "trials-section"]
    full = page(client, f"/sweeps/{sweep['id']}")
    for element_id in top_level_ids:
        assert f'id="{element_id}"' in full
    assert 'data-active="true" data-title="lr-search (running) · trainboard"' in fragment.text

    job_id = run_trial(engine, [45.0, 47.5, 52.5], "succeeded")
    updated = client.get(f"/sweeps/{sweep['id']}/live").text
    assert f'<strong id="best-value">52.50%</strong>' in updated and f'<tr id="trial-{job_id}" class="best">' in updated

    client.post(f"/sweeps/{sweep['id']}/cancel")
    ended = client.get(f"/sweeps/{sweep['id']}/live").text
    assert 'data-active="false"' in ended and 'class="badge cancelled" id="status"' in ended
    assert "<strong>Cancelled:</strong> cancelled by request" in ended
    assert "data-live-src" not in page(client, f"/sweeps/{sweep['id']}")
    assert client.get("/sweeps/99/live").status_code == 404
    assert client.get("/sweeps/99", headers=HTML).status_code == 404


def test_cancel_on_the_sweep_page_ends_its_trials_and_a_second_is_refused_with_409(client):
    sweep = start_sweep(client)
    response = client.post(f"/sweeps/{sweep['id']}/cancel", headers=HTML, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/sweeps/{sweep['id']}"
    after = client.get(f"/sweeps/{sweep['id']}").json()
    assert after["status"] == "cancelled" and after["counts"] == {"cancelled": 3}

    html = page(client, f"/sweeps/{sweep['id']}")
    assert 'action="/sweeps/1/cancel"' not in html and 'href="/sweeps/new?from=1"' in html
    again = client.post(f"/sweeps/{sweep['id']}/cancel", headers=HTML)
    assert again.status_code == 409 and again.headers["content-type"].startswith("text/html")
    assert f"<strong>Not done:</strong> sweep {sweep['id']} is cancelled; cannot cancel it." in again.text
    assert client.post("/sweeps/99/cancel", headers=HTML).status_code == 404


def test_new_sweep_from_this_one_opens_the_form_with_its_config_less_its_name(client):
    sweep = start_sweep(client)
    html = page(client, f"/sweeps/new?from={sweep['id']}")
    assert f'From <a href="/sweeps/{sweep["id"]}">sweep #{sweep["id"]} lr-search</a>' in html
    config = form_config(html)
    assert "name:" not in config.replace("  name: test_accuracy", "")  # the metric keeps its name
    assert "log_uniform_values" in config and "seed: 7" in config

    response = client.post("/sweeps/new", data={"config": config}, follow_redirects=False)
    assert response.status_code == 303
    copy = client.get(response.headers["location"]).json()
    assert copy["name"] == f"sweep-{copy['id']}"
    assert {key: value for key, value in copy["config"].items()} == {k: v for k, v in sweep["config"].items() if k != "name"}
    assert "There is no sweep #42 to start from" in page(client, "/sweeps/new?from=42", 404)


def test_a_trial_page_links_its_sweep_and_a_pruned_one_says_why(client, engine):
    sweep = start_sweep(client)
    run_trial(engine, [40.0, 45.0, 50.0], "succeeded")
    pruned = run_trial(engine, [20.0], "pruned")
    trial_number = client.get(f"/jobs/{pruned}").json()["trial_number"]

    html = page(client, f"/jobs/{pruned}")
    assert f'<dd id="sweep">trial {trial_number} of sweep <a href="/sweeps/{sweep["id"]}">lr-search</a></dd>' in html
    assert '<span class="badge pruned" id="status">pruned</span>' in html
    assert "<strong>Pruned:</strong> pruned by hyperband at epoch 1 (rung 0, eta 3)" in html
    assert 'id="error"' not in html  # pruned is not failed

    listing = page(client, "/")
    assert f'<tr id="job-{pruned}">' in listing and '<span class="badge pruned">pruned</span>' in listing
    assert 'pruned <span class="count">1</span>' in listing
    assert 'id="sweep"' not in page(client, "/jobs/new")


def test_the_sweep_pages_never_import_torch(tmp_path):
    """The web process stays light: serving every sweep page (and starting a sweep, which asks
    Optuna for trials) imports no torch."""
    script = f"""
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
settings = Settings(database_url="sqlite:///{tmp_path / 'light.db'}", artifacts_dir="{tmp_path / 'artifacts'}", _env_file=None)
html = {{"Accept": "text/html"}}
with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
    assert client.post("/sweeps/new", data={{"config": {SWEEP_YAML!r}}}, follow_redirects=False).status_code == 303
    for path in ("/sweeps", "/sweeps/new", "/sweeps/new?from=1", "/sweeps/1", "/sweeps/1/live", "/jobs/1"):
        assert client.get(path, headers=html).status_code == 200, path
assert "optuna" in sys.modules, "the sweep was not asked for trials"
assert "torch" not in sys.modules, "the web process imported torch"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
