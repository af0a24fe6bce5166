"""The JSON API against a real SQLite file (and PostgreSQL where its SQL matters: db_client):
submit, validation and its hints, listing (search, filters, sort), reading, editing, deleting,
queue positions and waiting reasons, 404s, pages."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from app import queue
from app.db import get_engine, is_sqlite, session_scope
from app.main import create_app
from app.models import Job, JobCreate, JobMetric, Worker, as_utc
from app.settings import Settings
from tests.conftest import LOCAL

TUTORIAL_DEFAULTS = {
    "batch_size": 64, "test_batch_size": 1000, "epochs": 5, "lr": 0.01, "momentum": 0.1, "use_cuda": True,
    "seed": 2043, "log_interval": 10, "model": "resnet18", "pretrained": True, "dataset": "cifar10",
    "train_subset": None, "test_subset": None, "wandb_project": "thorough-pytorch", "wandb_entity": None, "tags": [],
}


def job_count(client: TestClient) -> int:
    return client.get("/jobs").json()["total"]


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_submit_with_defaults_of_the_tutorial(client):
    response = client.post("/jobs", json={})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["name"] == f"job-{job['id']}" == job["params"]["name"]
    assert {key: job["params"][key] for key in TUTORIAL_DEFAULTS} == TUTORIAL_DEFAULTS
    assert job["params"]["wandb_mode"] == "offline"  # from the settings
    assert job["wandb"] == {"mode": None, "url": None, "run_id": None, "dir": None, "sync_command": None}
    assert client.get(f"/jobs/{job['id']}").json() == job


def test_submit_without_a_body_takes_the_defaults(client):
    response = client.post("/jobs")
    assert response.status_code == 201
    assert response.json()["params"]["epochs"] == 5


def test_submit_as_the_readme_shows(client):
    job = client.post("/jobs", json={"lr": 0.05, "epochs": 3, "wandb_mode": "disabled", "tags": ["a", "b"]}).json()
    assert job["params"]["lr"] == 0.05 and job["params"]["epochs"] == 3
    assert job["params"]["wandb_mode"] == "disabled" and job["params"]["tags"] == ["a", "b"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0), ("batch_size", 4097), ("test_batch_size", 0), ("test_batch_size", 10001),
        ("epochs", 0), ("epochs", 1001), ("lr", 0), ("lr", -0.1), ("lr", 10.5), ("momentum", -0.1), ("momentum", 1),
        ("seed", -1), ("seed", 2**32), ("log_interval", 0), ("log_interval", 100001),
        ("train_subset", 0), ("train_subset", 50001), ("test_subset", 0), ("test_subset", 10001),
        ("model", "resnet50"), ("dataset", "imagenet"), ("wandb_mode", "sometimes"),
        ("name", ""), ("name", "x" * 129), ("name", "two\nlines"),
        ("wandb_project", "a/b"), ("wandb_project", "p" * 129), ("wandb_entity", "bad entity"),
        ("tags", ["t"] * 17), ("tags", ["x" * 65]),
        # wrong types
        ("lr", "fast"), ("epochs", 1.5), ("epochs", "many"), ("use_cuda", "maybe"), ("tags", "one"), ("batch_size", None),
    ],
)
def test_out_of_bounds_or_wrong_type_is_refused_naming_the_field(client, field, value):
    response = client.post("/jobs", json={field: value})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"][0]["loc"][:2] == ["body", field]
    assert body["detail"][0]["field"].split(".")[0] == field
    assert body["message"].startswith(f"{field}")
    assert job_count(client) == 0


def test_unknown_field_is_refused(client):
    response = client.post("/jobs", json={"epochs": 2, "learning_rate": 0.1})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "learning_rate" and error["type"] == "extra_forbidden"
    assert job_count(client) == 0


def test_non_object_body_is_refused(client):
    assert client.post("/jobs", json=[1, 2]).status_code == 422
    assert client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert job_count(client) == 0


def test_bounds_at_their_limits_are_accepted(client):
    limits = {"batch_size": 4096, "epochs": 1000, "lr": 10, "momentum": 0.99, "seed": 2**32 - 1,
              "train_subset": 50000, "test_subset": 10000, "name": "n" * 128, "tags": ["t"] * 16}
    assert client.post("/jobs", json=limits).status_code == 201


def test_list_is_newest_first_paginated_and_filtered(client):
    ids = [client.post("/jobs", json={"name": f"j{i}"}).json()["id"] for i in range(5)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["items"]] == ids[::-1][:2]
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 0
    second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert [job["id"] for job in second["items"]] == ids[::-1][2:4]
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == [ids[1]] and cancelled["total"] == 1
    assert client.get("/jobs", params={"status": "lost"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_list_searches_names_and_tags_with_q(client):
    for name, tags in (("baseline", ["sweep"]), ("other", []), ("Sweep-2", [])):
        client.post("/jobs", json={"name": name, "tags": tags})
    found = client.get("/jobs", params={"q": "SWEEP"}).json()
    assert [job["name"] for job in found["items"]] == ["Sweep-2", "baseline"] and found["total"] == 2
    assert client.get("/jobs", params={"q": "sweep", "status": "running"}).json()["total"] == 0
    assert client.get("/jobs", params={"q": "x" * 129}).status_code == 422


def test_log_from_an_offset_returns_only_what_was_written_since(client, settings):
    job = client.post("/jobs", json={}).json()
    assert client.get(f"/jobs/{job['id']}/log").headers["x-log-offset"] == "0"
    log = settings.job_files(job["id"]).log
    log.parent.mkdir(parents=True)
    log.write_text("first line\nsecond line\n")
    whole = client.get(f"/jobs/{job['id']}/log")
    assert whole.text == "first line\nsecond line\n" and whole.headers["x-log-offset"] == str(len(whole.text))
    with log.open("a") as stream:
        stream.write("third line, é\n")
    since = client.get(f"/jobs/{job['id']}/log", params={"offset": whole.headers["x-log-offset"]})
    assert since.text == "third line, é\n" and int(since.headers["x-log-offset"]) == log.stat().st_size
    assert client.get(f"/jobs/{job['id']}/log", params={"offset": since.headers["x-log-offset"]}).text == ""
    capped = client.get(f"/jobs/{job['id']}/log", params={"offset": 6, "tail": 4})
    assert capped.text == "line" and capped.headers["x-log-offset"] == "10"
    assert client.get(f"/jobs/{job['id']}/log", params={"offset": -1}).status_code == 422


def test_unknown_job_is_404(client):
    for path in ("/jobs/999", "/jobs/999/metrics", "/jobs/999/log", "/jobs/999/artifacts/model.pth"):
        assert client.get(path).status_code == 404, path
    assert client.post("/jobs/999/cancel").status_code == 404
    assert client.post("/jobs/999/retry").status_code == 404


def start_ids_at(engine: Engine, first_id: int) -> None:
    """Make the next job's id `first_id`: PostgreSQL's sequence moves on; SQLite numbers a new row
    after the largest id, so a job is put just below it."""
    if is_sqlite(engine):
        with session_scope(engine) as session:
            session.add(Job(id=first_id - 1, name="below", status="cancelled"))
            session.commit()
    else:
        with engine.begin() as connection:
            connection.execute(text("SELECT setval(pg_get_serial_sequence('jobs', 'id'), :last)"), {"last": first_id - 1})


def test_ids_past_32_bits_work_on_both_databases(db_client):
    client = db_client
    engine = get_engine(client.app.state.settings.database_url)
    html = {"Accept": "text/html"}
    absent = 2**31
    for path in ("", "/metrics", "/log", "/artifacts/model.pth", "/examples/0.png"):
        assert client.get(f"/jobs/{absent}{path}").status_code == 404, path
    for action in ("cancel", "retry"):
        assert client.post(f"/jobs/{absent}/{action}").status_code == 404, action
    assert client.get(f"/jobs/{2**63 - 1}").status_code == 404
    assert client.get(f"/jobs/{absent}", headers=html).status_code == 404
    assert client.get(f"/jobs/new?clone={absent}", headers=html).status_code == 404
    assert client.get(f"/compare?ids={absent},{absent + 1}", headers=html).status_code == 404

    first = 2**32 + 7
    start_ids_at(engine, first)
    assert client.post("/jobs", json={"name": "big"}).json()["id"] == first
    claim = queue.claim(engine, "worker-a", 60)
    assert claim.job_id == first
    assert queue.record_progress(engine, claim, progress={"epoch": 0, "epochs": 5}, points=[("train", 10, {"train_loss": 2.0})])
    assert queue.finish(engine, claim, "failed", error="diverged")
    assert [point["values"] for point in client.get(f"/jobs/{first}/metrics").json()] == [{"train_loss": 2.0}]
    retried = client.post(f"/jobs/{first}/retry").json()
    assert retried["id"] == first + 1 and retried["retry_of"] == first
    assert "big" in client.get(f"/jobs/{first}", headers=html).text


def report_points(engine: Engine, points: list[tuple[str, int, dict]]) -> queue.Claim:
    """Claim the oldest queued job and report `points` for it, as a worker does."""
    claim = queue.claim(engine, "worker-a", 60)
    for start in range(0, len(points), 5000):
        assert queue.record_progress(engine, claim, progress={"epoch": 1, "epochs": 5}, points=points[start:start + 5000])
    return claim


def test_metrics_are_paged_by_step_and_thinned_on_both_databases(db_client):
    client = db_client
    engine = get_engine(client.app.state.settings.database_url)
    job = client.post("/jobs", json={}).json()
    train = [("train", step, {"batch": step, "train_loss": 1 / step}) for step in range(10, 25_001, 10)]
    epochs = [("epoch", epoch, {"epoch": epoch, "test_accuracy": 10.0 * epoch}) for epoch in range(1, 6)]
    report_points(engine, train + epochs)
    url = f"/jobs/{job['id']}/metrics"

    everything = client.get(url).json()
    assert [(point["kind"], point["step"]) for point in everything] == [(kind, step) for kind, step, _ in epochs + train]
    assert everything[-1] == {"attempt": 1, "kind": "train", "step": 25_000, "values": {"batch": 25_000, "train_loss": 1 / 25_000}}

    pages, after_step = [], 0
    while page := client.get(url, params={"kind": "train", "limit": 1000, "after_step": after_step}).json():
        pages.append(page)
        after_step = page[-1]["step"]
    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert [point["step"] for page in pages for point in page] == [step for _, step, _ in train]

    thinned = client.get(url, params={"kind": "train", "max_points": 100}).json()
    steps = [point["step"] for point in thinned]
    assert len(steps) == 100 and steps[0] == 10 and steps[-1] == 25_000
    assert {later - earlier for earlier, later in zip(steps, steps[1:])} <= {250, 260}
    assert all(point["values"] == {"batch": point["step"], "train_loss": 1 / point["step"]} for point in thinned)

    tail = [point["step"] for point in client.get(url, params={"kind": "train", "max_points": 10, "after_step": 20_000}).json()]
    assert len(tail) == 10 and tail[0] == 20_010 and tail[-1] == 25_000
    assert len(client.get(url, params={"kind": "train", "max_points": 5000}).json()) == len(train)
    both = client.get(url, params={"max_points": 3}).json()
    assert [(point["kind"], point["step"]) for point in both] == [
        ("epoch", 1), ("epoch", 3), ("epoch", 5), ("train", 10), ("train", 12_510), ("train", 25_000)
    ]


def test_metrics_cap_an_unparameterised_read_and_follow_the_current_attempt(client, settings):
    engine = get_engine(settings.database_url)
    job = client.post("/jobs", json={}).json()
    claim = report_points(engine, [("train", step, {"train_loss": 1.0}) for step in range(1, 12_001)])
    url = f"/jobs/{job['id']}/metrics"
    first = client.get(url).json()
    assert len(first) == 10_000 and first[-1]["step"] == 10_000

    queue.reap_expired(engine, now=as_utc(queue.get_job(engine, claim.job_id).lease_expires_at) + timedelta(seconds=1))
    report_points(engine, [("train", 5, {"train_loss": 2.0})])
    assert client.get(url).json() == [{"attempt": 2, "kind": "train", "step": 5, "values": {"train_loss": 2.0}}]
    assert len(client.get(url, params={"attempt": 1, "after_step": 11_000}).json()) == 1000


@pytest.mark.parametrize(
    ("field", "value"),
    [("limit", 0), ("limit", 10_001), ("max_points", 0), ("max_points", 10_001), ("after_step", -1),
     ("after_step", 2**31), ("attempt", 0), ("kind", "loss")],
)
def test_metrics_parameters_out_of_bounds_are_refused_naming_them(client, field, value):
    job = client.post("/jobs", json={}).json()
    response = client.get(f"/jobs/{job['id']}/metrics", params={field: value})
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == field


def test_artifacts_resolve_only_listed_names(client):
    job = client.post("/jobs", json={}).json()
    for name in ("model.pth", "job.log", "..%2F..%2Fapi.db", "%2Fetc%2Fpasswd"):
        assert client.get(f"/jobs/{job['id']}/artifacts/{name}").status_code == 404, name


def test_browser_gets_pages_and_scripts_get_json(client):
    job = client.post("/jobs", json={"name": "page-job"}).json()
    html = {"Accept": "text/html,application/xhtml+xml"}
    for path in ("/", "/jobs", f"/jobs/{job['id']}", "/jobs/new", "/workers"):
        response = client.get(path, headers=html)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
    assert "page-job" in client.get(f"/jobs/{job['id']}", headers=html).text
    assert client.get(f"/jobs/{job['id']}").headers["content-type"] == "application/json"
    assert client.get("/jobs/999", headers=html).status_code == 404


def test_new_job_link_and_form_defaults(client):
    index = client.get("/", headers={"Accept": "text/html"}).text
    assert '<a class="button primary" href="/jobs/new">New job</a>' in index
    form = client.get("/jobs/new").text
    for name in JobCreate.model_fields:
        assert f'name="{name}"' in form, name
    assert 'name="lr" value="0.01"' in form and 'name="batch_size" value="64"' in form


def test_form_submit_redirects_to_the_job(client):
    response = client.post(
        "/jobs/new", data={"epochs": "2", "lr": "0.05", "dataset": "synthetic", "tags": "a, b"}, follow_redirects=False
    )
    assert response.status_code == 303
    job = client.get(response.headers["location"]).json()
    params = job["params"]
    assert params["epochs"] == 2 and params["lr"] == 0.05 and params["dataset"] == "synthetic"
    assert params["tags"] == ["a", "b"] and params["pretrained"] is False  # an unchecked box is false


def test_form_with_a_bad_value_is_reshown_with_the_message_beside_it(client):
    response = client.post("/jobs/new", data={"epochs": "0", "lr": "0.05", "name": "keep-me"})
    assert response.status_code == 422
    assert 'id="epochs-error"' in response.text and "greater than or equal to 1" in response.text
    assert 'value="keep-me"' in response.text and 'name="lr" value="0.05"' in response.text
    assert job_count(client) == 0


def test_openapi_documents_the_job_fields_with_examples(client):
    schema = client.get("/openapi.json").json()
    job_create = schema["components"]["schemas"]["JobCreate"]
    assert job_create["additionalProperties"] is False
    assert job_create["properties"]["lr"]["description"]
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert "examples" in body
    assert client.get("/docs").status_code == 200


def test_migrations_keep_jobs_across_restarts(settings):
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        job = client.post("/jobs", json={"name": "survivor"}).json()
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        assert client.get(f"/jobs/{job['id']}").json()["name"] == "survivor"


def test_a_full_queue_refuses_new_jobs_with_429(tmp_path: Path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'cap.db'}", max_queued=2, _env_file=None)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        first = client.post("/jobs", json={}).json()
        client.post("/jobs", json={})
        refused = client.post("/jobs", json={"name": "third"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "TRAINBOARD_MAX_QUEUED" in refused.json()["detail"]
        form = client.post("/jobs/new", data={"name": "from-the-form", "epochs": "2"})
        assert form.status_code == 429 and 'id="form-refusal"' in form.text and 'value="from-the-form"' in form.text
        assert client.get("/jobs").json()["total"] == 2
        client.post(f"/jobs/{first['id']}/cancel")
        assert client.post("/jobs", json={"name": "third"}).status_code == 201


# ---------------------------------------------------------------------------------------------
# Listing: search, filters, sort orders, and unknown query parameters (on both databases)
# ---------------------------------------------------------------------------------------------


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


def test_list_searches_names_tags_and_notes_and_filters_by_tag_status_and_creation_time(db_client):
    first = db_client.post("/jobs", json={"name": "baseline", "tags": ["sweep", "lr"]}).json()
    second = db_client.post("/jobs", json={"name": "other", "tags": ["sweeper"]}).json()
    third = db_client.post("/jobs", json={"name": "third"}).json()
    db_client.patch(f"/jobs/{third['id']}", json={"notes": "tried the SWEEP idea"})
    fourth = db_client.post("/jobs", json={"name": "fourth"}).json()
    db_client.post(f"/jobs/{second['id']}/cancel")

    assert ids(db_client.get("/jobs", params={"q": "sweep"})) == [third["id"], second["id"], first["id"]]
    assert ids(db_client.get("/jobs", params={"tag": "sweep"})) == [first["id"]]
    assert ids(db_client.get("/jobs", params={"tag": "lr"})) == [first["id"]]
    assert ids(db_client.get("/jobs", params={"tag": "swe"})) == []
    assert ids(db_client.get("/jobs", params={"tag": "sweeper", "status": "cancelled"})) == [second["id"]]
    assert ids(db_client.get("/jobs", params={"tag": "sweeper", "status": "queued"})) == []

    boundary = third["created_at"]
    assert ids(db_client.get("/jobs", params={"created_after": boundary})) == [fourth["id"], third["id"]]
    assert ids(db_client.get("/jobs", params={"created_before": boundary})) == [second["id"], first["id"]]
    # The same moment with an offset, and without one (UTC).
    moment = datetime.fromisoformat(boundary)
    shifted = moment.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert ids(db_client.get("/jobs", params={"created_after": shifted})) == [fourth["id"], third["id"]]
    naive = moment.replace(tzinfo=None).isoformat()
    assert ids(db_client.get("/jobs", params={"created_before": naive})) == [second["id"], first["id"]]
    page = db_client.get("/jobs", params={"q": "sweep", "created_after": boundary}).json()
    assert [job["id"] for job in page["items"]] == [third["id"]] and page["total"] == 1


def test_list_sorts_by_creation_end_and_final_metrics_with_missing_ones_last(db_client, db_settings):
    engine = get_engine(db_settings.database_url)
    job_ids = [db_client.post("/jobs", json={"name": f"j{n}"}).json()["id"] for n in range(4)]
    low, high, failed, queued = job_ids
    for metrics, status in (({"test_accuracy": 50.0, "test_loss": 1.0}, "succeeded"),
                            ({"test_accuracy": 70.0, "test_loss": 0.5}, "succeeded"), (None, "failed")):
        queue.finish(engine, queue.claim(engine, "worker-a", 60), status, metrics=metrics, error="x" if metrics is None else None)

    def order(sort: str) -> list[int]:
        return ids(db_client.get("/jobs", params={"sort": sort}))

    assert order("-created") == ids(db_client.get("/jobs")) == [queued, failed, high, low]
    assert order("created") == [low, high, failed, queued]
    assert order("-test_accuracy") == [high, low, queued, failed]
    assert order("test_accuracy") == [low, high, queued, failed]
    assert order("test_loss") == [high, low, queued, failed]
    assert order("-test_loss") == [low, high, queued, failed]
    assert order("finished") == [low, high, failed, queued]
    assert order("-finished") == [failed, high, low, queued]
    assert ids(db_client.get("/jobs", params={"sort": "-test_accuracy", "limit": 1, "offset": 1})) == [low]


def test_unknown_query_parameters_are_refused_naming_them(client):
    client.post("/jobs", json={})
    response = client.get("/jobs", params={"stauts": "queued", "page": "2"})
    assert response.status_code == 422
    body = response.json()
    assert [error["field"] for error in body["detail"]] == ["stauts", "page"]
    assert body["detail"][0]["msg"].endswith("did you mean `status`?")
    assert "did you mean" not in body["detail"][1]["msg"] and "sort" in body["detail"][1]["msg"]
    assert body["message"].startswith("stauts: ")
    for params, field in (({"sort": "accuracy"}, "sort"), ({"created_after": "yesterday"}, "created_after")):
        refused = client.get("/jobs", params=params)
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == field, params
    metrics = client.get("/jobs/1/metrics", params={"knd": "epoch"})
    assert metrics.status_code == 422 and metrics.json()["detail"][0]["msg"].endswith("did you mean `kind`?")
    assert client.get("/jobs/1/log", params={"tail": 10, "follow": 1}).status_code == 422
    assert client.get("/jobs/1/log", params={"tail": 10}).status_code == 200


# ---------------------------------------------------------------------------------------------
# Deleting and editing jobs (on both databases)
# ---------------------------------------------------------------------------------------------


def test_delete_removes_a_finished_job_its_points_and_files_and_unlinks_its_retry(db_client, db_settings):
    engine = get_engine(db_settings.database_url)
    done = db_client.post("/jobs", json={"name": "done"}).json()
    claim = queue.claim(engine, "worker-a", 60)
    queue.record_progress(engine, claim, progress={"epoch": 1}, points=[("epoch", 1, {"test_accuracy": 40.0})])
    queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": 40.0})
    folder = db_settings.job_files(done["id"]).root
    (folder / "wandb").mkdir(parents=True)
    db_settings.job_files(done["id"]).model.write_bytes(b"weights")
    db_settings.job_files(done["id"]).log.write_text("trained\n")
    cancelled = db_client.post("/jobs", json={"name": "cancelled"}).json()
    db_client.post(f"/jobs/{cancelled['id']}/cancel")
    retry = db_client.post(f"/jobs/{cancelled['id']}/retry").json()
    assert retry["retry_of"] == cancelled["id"]

    response = db_client.delete(f"/jobs/{done['id']}")
    assert response.status_code == 204 and response.content == b""
    assert db_client.get(f"/jobs/{done['id']}").status_code == 404
    assert db_client.get(f"/jobs/{done['id']}/metrics").status_code == 404
    assert not folder.exists()
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(JobMetric).where(JobMetric.job_id == done["id"])) == 0

    assert db_client.delete(f"/jobs/{cancelled['id']}").status_code == 204  # it never had a folder
    kept = db_client.get(f"/jobs/{retry['id']}").json()
    assert kept["retry_of"] is None and kept["status"] == "queued"
    assert "retry of" not in db_client.get(f"/jobs/{retry['id']}", headers={"Accept": "text/html"}).text
    assert [job["id"] for job in db_client.get("/jobs").json()["items"]] == [retry["id"]]


def test_delete_refuses_unfinished_and_unknown_jobs(db_client, db_settings):
    queued = db_client.post("/jobs", json={}).json()
    refused = db_client.delete(f"/jobs/{queued['id']}")
    assert refused.status_code == 409 and "is queued" in refused.json()["detail"]
    queue.claim(get_engine(db_settings.database_url), "worker-a", 60)
    refused = db_client.delete(f"/jobs/{queued['id']}")
    assert refused.status_code == 409 and "is running" in refused.json()["detail"]
    assert db_client.get(f"/jobs/{queued['id']}").json()["status"] == "running"
    assert db_client.delete("/jobs/999").status_code == 404


def test_a_deleted_jobs_id_is_never_given_out_again(db_client):
    newest = db_client.post("/jobs", json={}).json()
    db_client.post(f"/jobs/{newest['id']}/cancel")
    assert db_client.delete(f"/jobs/{newest['id']}").status_code == 204
    assert db_client.post("/jobs", json={}).json()["id"] == newest["id"] + 1


def test_patch_renames_retags_and_writes_notes_that_search_finds(db_client):
    job = db_client.post("/jobs", json={"name": "before", "tags": ["old"]}).json()
    notes = "lr 0.05 diverged\n\tafter epoch 3"
    response = db_client.patch(f"/jobs/{job['id']}", json={"name": "after", "tags": ["new", "kept"], "notes": notes})
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["name"] == patched["params"]["name"] == "after"
    assert patched["params"]["tags"] == ["new", "kept"] and patched["notes"] == notes
    assert db_client.get(f"/jobs/{job['id']}").json() == patched
    assert ids(db_client.get("/jobs", params={"q": "DIVERGED"})) == [job["id"]]
    assert ids(db_client.get("/jobs", params={"tag": "new"})) == [job["id"]]

    unchanged = db_client.patch(f"/jobs/{job['id']}", json={}).json()
    assert (unchanged["name"], unchanged["notes"]) == ("after", notes)
    cleared = db_client.patch(f"/jobs/{job['id']}", json={"notes": "", "tags": []}).json()
    assert cleared["notes"] is None and cleared["params"]["tags"] == [] and cleared["name"] == "after"
    assert db_client.patch("/jobs/999", json={"notes": "x"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": None}, "name", "may not be null"),
        ({"tags": ["x" * 65]}, "tags.0", "at most 64 characters"),
        ({"tags": "a, b"}, "tags", "valid list"),
        ({"notes": "n" * 10_001}, "notes", "at most 10000 characters"),
        ({"notes": "bell\x07"}, "notes", "may not contain `\\x07`"),
        ({"note": "typo"}, "note", "did you mean `notes`?"),
    ],
)
def test_patch_refuses_bad_fields_naming_them(client, body, field, hint):
    job = client.post("/jobs", json={"name": "kept"}).json()
    response = client.patch(f"/jobs/{job['id']}", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["field"] == field and hint in error["msg"]
    assert response.json()["message"].startswith(f"{field}: ")
    assert client.get(f"/jobs/{job['id']}").json()["name"] == "kept"


# ---------------------------------------------------------------------------------------------
# Where a queued job stands and why it waits (on both databases)
# ---------------------------------------------------------------------------------------------


def register_worker(engine, worker_id: str, slots: int) -> None:
    queue.register_worker(engine, Worker(
        id=worker_id, host="gpu-host", pid=1,
        slots=[{"index": n, "device": f"cuda:{n}", "job_id": None} for n in range(slots)],
    ))


def test_queued_jobs_say_their_position_and_why_they_wait(db_client, db_settings):
    engine = get_engine(db_settings.database_url)
    job_ids = [db_client.post("/jobs", json={}).json()["id"] for _ in range(3)]

    def waiting() -> list[tuple]:
        jobs = {job["id"]: job for job in db_client.get("/jobs").json()["items"]}
        assert all(db_client.get(f"/jobs/{job_id}").json() == jobs[job_id] for job_id in job_ids)
        return [(jobs[job_id]["queue_position"], jobs[job_id]["waiting_reason"]) for job_id in job_ids]

    no_worker = {"code": "no_worker", "message": "no worker is alive; start one with `trainboard worker`"}
    assert waiting() == [(1, no_worker), (2, no_worker), (3, no_worker)]

    register_worker(engine, "two-gpus", slots=2)
    busy = {"code": "all_busy", "message": "all 2 worker slots are busy; position 3 in the queue"}
    assert waiting() == [(1, None), (2, None), (3, busy)]

    queue.claim(engine, "two-gpus", 60)
    busy = {"code": "all_busy", "message": "all 2 worker slots are busy; position 2 in the queue"}
    assert waiting() == [(None, None), (1, None), (2, busy)]

    queue.worker_heartbeat(engine, "two-gpus", [], stopped=True)
    assert waiting() == [(None, None), (1, no_worker), (2, no_worker)]
    submitted = db_client.post("/jobs", json={}).json()
    assert (submitted["queue_position"], submitted["waiting_reason"]) == (3, no_worker)


# ---------------------------------------------------------------------------------------------
# Errors that say what to do
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "meant"), [("learning_rate", "lr"), ("batchsize", "batch_size"), ("epoch", "epochs")])
def test_an_unknown_field_suggests_the_one_it_most_likely_meant(client, given, meant):
    response = client.post("/jobs", json={given: 1})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == given and error["type"] == "extra_forbidden"
    assert error["msg"] == f"Extra inputs are not permitted; did you mean `{meant}`?"
    assert response.json()["message"] == f"{given}: Extra inputs are not permitted; did you mean `{meant}`?"


def test_malformed_json_is_reported_at_its_line_and_column(client):
    body = b'{\n  "lr": 0.05,\n  "epochs": \n}'
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    expected = "the body is not valid JSON: Expecting value at line 4 column 1"
    [error] = response.json()["detail"]
    assert error["msg"] == expected and error["field"] is None
    assert response.json()["message"] == expected
    assert job_count(client) == 0


def test_a_bad_wandb_project_names_the_characters_not_the_regex(client):
    response = client.post("/jobs", json={"wandb_project": "team/project"})
    [error] = response.json()["detail"]
    assert error["field"] == "wandb_project"
    assert error["msg"] == "may not contain `/` (W&B project names cannot hold / \\ # ? % : or whitespace)"
    entity = client.post("/jobs", json={"wandb_entity": "my team"}).json()["detail"][0]["msg"]
    assert entity == "may not contain a space (a W&B user or team is letters, digits, _ . and -)"
