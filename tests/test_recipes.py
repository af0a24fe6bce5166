"""Recipes (app/recipes.py): where they come from and what is refused, the API and pages that
take a recipe's fields, claims by recipe on both databases, and the run context a recipe's
train function gets (worker/context.py), in-process."""

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text
from pydantic import BaseModel, Field

from app import queue, recipes
from app.models import Worker
from app.recipes import RECIPES_ENV, Metric, Recipe, RecipeError
from app.settings import JobFiles
from worker.context import Run
from worker.protocol import CheckpointSaved, ChildSpec, Examples, Progress, Result, WandbStarted
from worker.reporter import CheckpointRequest

LAB = "tests.support.lab_recipe:recipe"


@pytest.fixture
def lab(monkeypatch) -> Recipe:
    """The lab's recipe, loaded as TRAINBOARD_RECIPES names it."""
    monkeypatch.setenv(RECIPES_ENV, LAB)
    return recipes.registry().get("lab-demo")


def test_recipes_come_from_the_tutorial_entry_points_and_the_environment_and_failures_are_reported():
    found = recipes.load(f"{LAB}, no_such_module:recipe, tests.support.lab_recipe:not_a_recipe, tests.support.lab_recipe:twice")
    assert list(found.recipes) == ["cifar10-resnet18", "lab-demo"]
    assert found.recipes["lab-demo"].source == f"{RECIPES_ENV} {LAB}"
    errors = found.errors
    assert "ModuleNotFoundError" in errors[f"{RECIPES_ENV} no_such_module:recipe"]
    assert "is not a trainboard Recipe" in errors[f"{RECIPES_ENV} tests.support.lab_recipe:not_a_recipe"]
    assert "defined twice" in errors[f"{RECIPES_ENV} tests.support.lab_recipe:twice"]
    assert recipes.load("").errors == {} and list(recipes.load("").recipes) == ["cifar10-resnet18"]


def test_a_recipe_is_refused_when_it_takes_trainboards_fields_or_declares_badly():
    class Clashing(BaseModel):
        seed: int = 1

    class Fine(BaseModel):
        depth: int = Field(default=2, ge=1)

    def make(**changes):
        given = {"name": "x", "title": "X", "version": "1", "params": Fine, "train": "m:f", "metrics": (Metric("a", "maximize"),)}
        return Recipe(**{**given, **changes})

    with pytest.raises(RecipeError, match="seed are trainboard's job fields"):
        make(params=Clashing)
    with pytest.raises(RecipeError, match="recipe name"):
        make(name="Has Spaces")
    with pytest.raises(RecipeError, match="must declare the metrics"):
        make(metrics=())
    with pytest.raises(RecipeError, match="module:function"):
        make(train="no_colon")

    class Required(BaseModel):
        depth: int

    with pytest.raises(RecipeError, match="every parameter needs a default"):
        make(params=Required)
    assert make(metrics=[Metric("a", "maximize")]).metrics == (Metric("a", "maximize"),)  # hashable, as pages cache by it
    # A well-declared one: its fields, then trainboard's, unknown ones refused, W&B project named after it.
    job = make().job_model
    assert list(job.model_fields)[:2] == ["depth", "name"] and "checkpoint_every" in job.model_fields
    assert job().wandb_project == "x"
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        job(width=3)


def test_the_api_takes_a_recipes_fields_and_names_what_it_refuses(lab: Recipe, client: TestClient):
    listed = {recipe["name"]: recipe for recipe in client.get("/recipes").json()}
    assert listed["lab-demo"]["version"] == "0.3" and listed["lab-demo"]["workers"] == []
    assert listed["lab-demo"]["metrics"] == [{"name": "score", "goal": "maximize", "wandb_name": "Score"}]
    assert {"width", "rate", "seed", "wandb_mode"} <= set(listed["lab-demo"]["schema"]["properties"])

    created = client.post("/jobs", json={"recipe": "lab-demo", "width": 3, "name": "lab-1"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["recipe"], job["recipe_version"]) == ("lab-demo", "0.3")
    assert job["params"]["width"] == 3 and job["params"]["rate"] == 0.1 and job["params"]["wandb_project"] == "lab-demo"
    # The tutorial's fields are not the lab recipe's, and the other way round.
    refused = client.post("/jobs", json={"recipe": "lab-demo", "width": 0, "lr": 0.1})
    assert refused.status_code == 422
    assert {error["field"] for error in refused.json()["detail"]} == {"width", "lr"}
    assert "width" in client.post("/jobs", json={"width": 3}).json()["message"]
    for bad in ("nope", 5, None):
        answer = client.post("/jobs", json={"recipe": bad})
        assert answer.status_code == 422 and answer.json()["detail"][0]["field"] == "recipe", bad
    assert "one of: cifar10-resnet18, lab-demo" in client.post("/jobs", json={"recipe": "nope"}).json()["message"]
    # A typo gets the recipe's field it most likely meant.
    assert "did you mean `width`" in client.post("/jobs", json={"recipe": "lab-demo", "widht": 3}).json()["message"]

    # It does not checkpoint, so it cannot pause; the tutorial's jobs still can.
    paused = client.post(f"/jobs/{job['id']}/pause")
    assert paused.status_code == 409 and "does not checkpoint" in paused.json()["detail"]
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"
    tutorial = client.post("/jobs", json={}).json()
    assert client.post(f"/jobs/{tutorial['id']}/pause").json()["status"] == "paused"
    # Retry keeps the recipe; fields the installed version no longer takes are a 409, not a 500.
    client.post(f"/jobs/{job['id']}/cancel")
    retried = client.post(f"/jobs/{job['id']}/retry").json()
    assert (retried["recipe"], retried["params"]["width"]) == ("lab-demo", 3)
    client.post(f"/jobs/{retried['id']}/cancel")
    with queue_engine(client.app.state.settings).begin() as connection:
        connection.execute(text("UPDATE jobs SET params = :params WHERE id = :id"), {"params": '{"width": 3, "depth": 9}', "id": retried["id"]})
    stale = client.post(f"/jobs/{retried['id']}/retry")
    assert stale.status_code == 409 and "do not fit recipe lab-demo version 0.3" in stale.json()["detail"]


def test_a_job_whose_recipe_no_live_worker_has_says_so(lab: Recipe, client: TestClient, settings):
    job = client.post("/jobs", json={"recipe": "lab-demo"}).json()
    engine = queue_engine(settings)
    queue.register_worker(engine, Worker(id="w1", host="h", pid=1, slots=[{"index": 0, "device": "cpu"}], recipes={"cifar10-resnet18": "1"}))
    waiting = client.get(f"/jobs/{job['id']}").json()["waiting_reason"]
    assert waiting["code"] == "no_recipe" and "lab-demo" in waiting["message"]
    assert client.get("/recipes").json()[0]["workers"] == ["w1"]
    queue.register_worker(engine, Worker(id="w2", host="h", pid=2, slots=[{"index": 0, "device": "cpu"}], recipes={"lab-demo": lab.version}))
    assert client.get(f"/jobs/{job['id']}").json()["waiting_reason"] is None


def queue_engine(settings):
    from app.db import get_engine

    return get_engine(settings.database_url)


def test_sweeps_validate_parameters_and_the_metric_against_their_recipe(lab: Recipe, client: TestClient):
    base = {"recipe": "lab-demo", "method": "grid", "metric": {"name": "Score", "goal": "maximize"}}
    wrong_field = client.post("/sweeps", json={**base, "parameters": {"lr": {"values": [0.1, 0.2]}}})
    assert wrong_field.status_code == 422 and wrong_field.json()["detail"][0]["field"] == "parameters.lr"
    assert "width" in wrong_field.json()["message"]
    out_of_bounds = client.post("/sweeps", json={**base, "parameters": {"width": {"values": [4, 100]}}})
    assert out_of_bounds.status_code == 422 and "less than or equal to 64" in out_of_bounds.json()["message"]
    wrong_metric = client.post("/sweeps", json={**base, "metric": {"name": "test_accuracy"}, "parameters": {"width": {"values": [4]}}})
    assert wrong_metric.status_code == 422 and "not a job metric of lab-demo; one of: score, Score" in wrong_metric.json()["message"]
    unknown = client.post("/sweeps", json={**base, "recipe": "nope", "parameters": {"width": {"values": [4]}}})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["field"] == "recipe"

    sweep = client.post("/sweeps", json={**base, "parameters": {"width": {"values": [4, 8]}}, "parallel": 2})
    assert sweep.status_code == 201, sweep.text
    assert sweep.json()["recipe"] == "lab-demo" and sweep.json()["metric"] == "score"
    trials = client.get("/jobs", params={"sweep_id": sweep.json()["id"]}).json()["items"]
    assert sorted((trial["recipe"], trial["params"]["width"]) for trial in trials) == [("lab-demo", 4), ("lab-demo", 8)]


def test_the_form_offers_each_recipe_with_its_fields(lab: Recipe, client: TestClient):
    tutorial = client.get("/jobs/new").text
    assert 'id="recipe-selector"' in tutorial and 'href="/jobs/new?recipe=lab-demo"' in tutorial
    assert 'name="lr"' in tutorial and 'name="width"' not in tutorial
    page = client.get("/jobs/new", params={"recipe": "lab-demo"}).text
    assert 'name="width"' in page and 'name="lr"' not in page and 'name="seed"' in page
    assert '<input type="hidden" name="recipe" value="lab-demo">' in page
    assert "A lab&#39;s demo" in page or "A lab's demo" in page
    assert client.get("/jobs/new", params={"recipe": "nope"}).status_code == 404

    client.get("/jobs/new")  # the CSRF cookie
    refused = client.post("/jobs/new", data={"recipe": "lab-demo", "width": "0", "csrf_token": client.cookies.get("trainboard_csrf", "")})
    assert refused.status_code == 422 and 'id="width-error"' in refused.text
    sent = client.post(
        "/jobs/new", data={"recipe": "lab-demo", "width": "5", "csrf_token": client.cookies.get("trainboard_csrf", "")},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    job = client.get(sent.headers["location"], headers={"Accept": "application/json"}).json()
    assert (job["recipe"], job["params"]["width"]) == ("lab-demo", 5)
    # The list and the compare page say which recipe each job trains.
    assert 'class="recipe" title="recipe lab-demo 0.3"' in client.get("/", headers={"Accept": "text/html"}).text
    tutorial = client.post("/jobs", json={}).json()
    compared = client.get("/compare", params={"ids": f"{job['id']},{tutorial['id']}"})
    assert compared.status_code == 200 and "lab-demo 0.3" in compared.text and "cifar10-resnet18 1" in compared.text


def test_workers_claim_only_the_recipes_they_have(engine, lab: Recipe):
    from app.models import JobCreate

    lab_job = queue.submit(engine, lab.validate({}), default_wandb_mode="disabled", max_attempts=1, recipe=lab)
    tutorial_job = queue.submit(engine, JobCreate(), default_wandb_mode="disabled", max_attempts=1)
    tutorial_only = queue.claim(engine, "a", 60, recipes=["cifar10-resnet18"])
    assert tutorial_only.job_id == tutorial_job.id and tutorial_only.recipe == "cifar10-resnet18"
    assert queue.claim(engine, "a", 60, recipes=["cifar10-resnet18"]) is None
    taken = queue.claim(engine, "b", 60, recipes=["cifar10-resnet18", "lab-demo"])
    assert (taken.job_id, taken.recipe, taken.params["width"]) == (lab_job.id, "lab-demo", 8)


def test_the_run_context_reports_checkpoints_restores_and_stops(lab: Recipe, tmp_path: Path):
    class Recorder:
        def __init__(self):
            self.events = []

        def report(self, event):
            self.events.append(event)

    def context(folder: Path, reporter, request, resume_from=None) -> Run:
        folder.mkdir(parents=True, exist_ok=True)
        spec = ChildSpec(
            name="ctx", recipe=lab.name, params=lab.validate({"checkpoint_every": 2, "wandb_mode": "disabled"}), job_dir=folder,
            data_dir=tmp_path, cifar_verify=False, resume_from=resume_from,
        )
        return Run(spec, device=torch.device("cpu"), reporter=reporter, checkpoint_request=request)

    first, request = Recorder(), CheckpointRequest()
    run = context(tmp_path / "one", first, request)
    assert run.restore() is None and run.wandb is None
    run.progress(0, 3, batch=1, batches=4)
    run.log_step(1, {"train_loss": torch.tensor(0.5)})
    run.log_epoch({"score": 1.0})
    assert not run.checkpoint({"weights": [1]})  # checkpoint_every 2: not after epoch 1
    run.examples([torch.zeros(1, 4, 4), [[0.0, 1.0], [1.0, 0.0]]], ["a", "b"])
    run.log_epoch({"score": float("nan")})
    assert run.checkpoint({"weights": [2]})
    (tmp_path / "one" / "out.txt").write_text("hello")
    run.save_artifact(tmp_path / "one" / "out.txt")
    with pytest.raises(ValueError):
        run.save_artifact(tmp_path / "one" / "out.txt", name="../escape")
    run.finish({"extra": 3})

    started, *events = first.events
    assert isinstance(started, WandbStarted) and started.mode == "disabled"
    first.events = events
    kinds = [type(event) for event in first.events]
    assert kinds == [Progress, Progress, Progress, Examples, Progress, CheckpointSaved, Result]
    assert first.events[1].points == [("train", 1, {"train_loss": 0.5})]
    assert first.events[4].points == [("epoch", 2, {"epoch": 2, "score": None})]
    saved = first.events[5]
    assert (saved.epoch, saved.batch, saved.path.exists()) == (2, 0, True)
    assert first.events[-1].metrics == {"epoch": 2, "score": None, "extra": 3}
    assert first.events[-1].artifacts == [{"name": "out.txt", "size": 5}]
    assert len(first.events[3].examples) == 2

    # The next attempt restores the state at its epoch; asked to stop, it saves whatever the cadence and reports no result.
    second, request = Recorder(), CheckpointRequest()
    resumed = context(tmp_path / "two", second, request, resume_from=saved.path)
    assert resumed.restore() == {"weights": [2]} and resumed.epoch == 2
    resumed.log_epoch({"score": 3.0})
    request.ask()
    assert resumed.should_stop() and resumed.checkpoint({"weights": [3]})
    resumed.finish()
    assert [type(event) for event in second.events] == [Progress, WandbStarted, CheckpointSaved]
    assert second.events[0].points == [("epoch", 3, {"epoch": 3, "score": 3.0})]

    # Asked to stop, a training that returns without checkpointing (it had finished) keeps its result.
    third, request = Recorder(), CheckpointRequest()
    finished = context(tmp_path / "three", third, request)
    request.ask()
    finished.log_epoch({"score": 5.0})
    finished.finish()
    assert isinstance(third.events[-1], Result) and third.events[-1].metrics == {"epoch": 1, "score": 5.0}

    # A checkpoint that is not this recipe's is refused rather than half-read.
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": 1, "recipe": "cifar10-resnet18", "state": {}}, foreign)
    with pytest.raises(RuntimeError, match="not one of recipe lab-demo's"):
        context(tmp_path / "four", Recorder(), CheckpointRequest(), resume_from=foreign).restore()


def test_a_job_whose_fields_this_workers_recipe_version_refuses_fails_saying_so(lab: Recipe, tmp_path: Path):
    from app.settings import Settings
    from worker.jobrun import RecipeMismatch, child_spec

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path, _env_file=None)
    claim = queue.Claim(job_id=1, attempt=1, worker_id="w", name="old", params={"width": 3, "depth": 2}, recipe="lab-demo")
    slot = type("Slot", (), {"memory_ceiling": None})()
    with pytest.raises(RecipeMismatch, match="do not fit recipe lab-demo version 0.3 as installed on this worker: depth"):
        child_spec(settings, slot, claim, JobFiles(tmp_path), None)
    fits = queue.Claim(job_id=1, attempt=1, worker_id="w", name="new", params={"width": 3}, recipe="lab-demo")
    spec = child_spec(settings, slot, fits, JobFiles(tmp_path), None)
    assert (spec.recipe, spec.params.width, type(spec.params)) == ("lab-demo", 3, lab.job_model)


def test_a_sweep_that_cannot_go_on_holds_up_no_other(engine, lab: Recipe, settings):
    from app import sweeps
    from app.models import Sweep
    from app.sweepconfig import plan

    config = {"method": "grid", "recipe": "lab-demo", "parameters": {"width": {"values": [2, 3]}}, "parallel": 1}
    with queue.write_session(engine) as session:
        # Older sweeps: one of a recipe this process lacks, one whose stored config no longer validates.
        session.add(Sweep(name="elsewhere", recipe="gone", method="grid", metric="score", goal="maximize", run_cap=2, parallel=1, seed=1, config={}))
        session.add(Sweep(name="broken", recipe="lab-demo", method="grid", metric="score", goal="maximize", run_cap=2, parallel=1, seed=1,
                          config={"method": "grid", "recipe": "lab-demo", "parameters": {"nope": {"values": [1]}}}))
        session.commit()
    good = sweeps.create(engine, settings, plan(config), config, owner="admin")
    trial = queue.claim(engine, "w", 60)
    queue.finish(engine, trial, "succeeded", metrics={"score": 1.0})
    sweeps.advance(engine, settings)
    trials = [job for job in queue_jobs(engine) if job.sweep_id == good.id]
    assert sorted(job.params["width"] for job in trials) == [2, 3]


def queue_jobs(engine):
    from sqlmodel import Session, select

    from app.models import Job

    with Session(engine) as session:
        return list(session.exec(select(Job)))
