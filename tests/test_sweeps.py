"""Sweeps: a W&B sweep config validated key by key; trials asked for and pruned by Optuna from what
the database holds; exactly run_cap trials, none duplicated, `parallel` never exceeded, whatever
is SIGKILLed; and three sweeps run end to end by real `trainboard serve` and `worker` processes."""

import json
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app import queue, sweeps
from app.db import get_engine, session_scope
from app.models import Job
from app.settings import Settings
from tests.conftest import ROOT, wait_for
from tests.test_worker import FAST_LEASES

YAML_SWEEP = """
name: lr-search
method: random
run_cap: 5
parallel: 2
seed: 11
metric:
  name: Test Accuracy
  goal: maximize
parameters:
  lr:
    distribution: log_uniform_values
    min: 1e-4
    max: 0.1
  batch_size:
    values: [32, 64]
  epochs:
    value: 3
"""

GRID = {
    "method": "grid", "parallel": 2, "seed": 3, "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {"lr": {"values": [0.1, 0.01]}, "batch_size": {"values": [32, 64]}, "epochs": {"value": 2}},
}


def trial_jobs(engine, sweep_id: int) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def run_trial(engine, claim: queue.Claim, accuracy_per_epoch: list[float]) -> str:
    """What a worker does with a trial, without the training: each epoch's metric, judged; the end."""
    for epoch, accuracy in enumerate(accuracy_per_epoch, start=1):
        metrics = {"epoch": epoch, "test_accuracy": accuracy, "test_loss": 1 / accuracy}
        assert queue.record_progress(engine, claim, progress={}, metrics=metrics, points=[("epoch", epoch, metrics)])
        pruning = sweeps.judge(engine, claim)
        if pruning is not None:
            assert queue.finish(engine, claim, "pruned", pruned=pruning.as_dict())
            return "pruned"
    assert queue.finish(engine, claim, "succeeded", metrics=metrics)
    return "succeeded"


# ---------------------------------------------------------------------------------------------
# The config: 422 naming the key, nothing stored
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"method": "random", "parameters": {"lr": {"min": 0.1, "max": 0.2}}}, "run_cap", "needs run_cap"),
    ({"method": "random", "run_cap": 2, "parameters": {"learning_rate": {"values": [0.1]}}}, "parameters.learning_rate", "not a job field"),
    ({"method": "random", "run_cap": 2, "parameters": {"lr": {"distribution": "uniform", "min": 0.1}}}, "parameters.lr", "needs min and max"),
    ({"method": "random", "run_cap": 2, "parameters": {"batch_size": {"values": [32, 0]}}}, "parameters.batch_size.values.1", "greater than or equal to 1"),
    ({"method": "grid", "parameters": {"lr": {"min": 0.001, "max": 0.1}}}, "parameters.lr", "grid needs values"),
    ({"method": "random", "run_cap": 2, "metric": {"name": "val_acc"}, "parameters": {"lr": {"values": [0.1]}}}, "metric.name", "not a job metric"),
    ({"method": "random", "run_cap": 1001, "parameters": {"lr": {"values": [0.1]}}}, "run_cap", "less than or equal to 1000"),
    ({"method": "random", "run_cap": 2, "parallel": 65, "parameters": {"lr": {"values": [0.1]}}}, "parallel", "less than or equal to 64"),
    ({"method": "grid", "parameters": {"batch_size": {"min": 1, "max": 4096}, "epochs": {"min": 1, "max": 10}}}, "parameters", "40,960 points"),
    ({"method": "bayes", "run_cap": 2, "parameters": {"lr": {"values": [0.1, 0.2]}}}, "metric", "need a metric"),
    ({"method": "random", "run_cap": 2, "parameters": {"lr": {"values": [0.1]}}, "early_terminate": {"type": "hyperband"}}, "early_terminate", "min_iter"),
]


@pytest.mark.parametrize(("config", "field", "words"), BAD_CONFIGS)
def test_a_bad_config_is_refused_naming_its_key_and_nothing_is_stored(db_client, config, field, words):
    response = db_client.post("/sweeps", json=config)
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in [error["field"] for error in body["detail"]], body
    assert words in body["message"]
    assert db_client.get("/sweeps").json()["total"] == 0
    assert db_client.get("/jobs").json()["total"] == 0


def test_yaml_bombs_broken_yaml_and_huge_bodies_get_a_clear_answer(client):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20)
    )
    yaml_type = {"Content-Type": "application/yaml"}
    refused = client.post("/sweeps", content=bomb, headers=yaml_type)
    assert refused.status_code == 422 and "aliases" in refused.json()["message"]
    broken = client.post("/sweeps", content="method: [grid\nparameters: {", headers=yaml_type)
    assert broken.status_code == 422 and "not valid YAML at line" in broken.json()["message"]
    huge = client.post("/sweeps", content="description: " + "x" * (1024 * 1024 + 10), headers=yaml_type)
    assert huge.status_code == 413
    assert client.post("/sweeps", content="method: grid", headers={"Content-Type": "text/csv"}).status_code == 415
    assert client.get("/sweeps").json()["total"] == 0


# ---------------------------------------------------------------------------------------------
# Trials from the database, on SQLite and PostgreSQL
# ---------------------------------------------------------------------------------------------


def test_a_yaml_sweep_queues_parallel_trials_that_are_ordinary_jobs(db_client):
    response = db_client.post("/sweeps", content=YAML_SWEEP, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert response.headers["Location"] == f"/sweeps/{sweep['id']}"
    assert (sweep["name"], sweep["method"], sweep["metric"], sweep["goal"], sweep["run_cap"]) == (
        "lr-search", "random", "test_accuracy", "maximize", 5,
    )
    assert sweep["counts"] == {"queued": 2} and sweep["config"]["parameters"]["batch_size"] == {"values": [32, 64]}
    assert sweep["config"]["parameters"]["lr"]["min"] == 0.0001  # 1e-4 is a number, as in YAML 1.2
    listed = db_client.get("/jobs", params={"sweep_id": sweep["id"]}).json()
    assert listed["total"] == 2
    for job in listed["items"]:
        assert job["sweep_id"] == sweep["id"] and job["trial_number"] in (0, 1)
        assert job["params"]["epochs"] == 3 and job["params"]["batch_size"] in (32, 64)
        assert 0.0001 <= job["params"]["lr"] <= 0.1
        assert job["name"] == f"lr-search-{job['trial_number']}"
    assert {trial["params"]["lr"] for trial in sweep["jobs"]} == {job["params"]["lr"] for job in listed["items"]}
    assert db_client.get("/sweeps").json()["items"][0]["id"] == sweep["id"]

    cancelled = db_client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"] == {"cancelled": 2}
    again = db_client.post(f"/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 409 and "is cancelled" in again.json()["detail"]


def test_a_grid_runs_each_point_once_and_finishes_with_the_best(db_client, db_settings: Settings):
    engine = get_engine(db_settings.database_url)
    sweep = db_client.post("/sweeps", json=GRID).json()
    assert sweep["run_cap"] == 4
    while (claim := queue.claim(engine, "grid-worker", 60)) is not None:
        accuracy = 50 + 100 * claim.params["lr"] + claim.params["batch_size"] / 10
        run_trial(engine, claim, [accuracy - 5, accuracy])
        sweeps.advance(engine, db_settings)
    done = db_client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "finished" and done["counts"] == {"succeeded": 4}
    points = {(trial["params"]["lr"], trial["params"]["batch_size"]) for trial in done["jobs"]}
    assert points == {(0.1, 32), (0.1, 64), (0.01, 32), (0.01, 64)}
    assert done["best_params"] == {"lr": 0.1, "batch_size": 64} and done["best_value"] == pytest.approx(66.4)
    assert [trial["value"] for trial in done["jobs"]] == sorted((t["value"] for t in done["jobs"]), reverse=True)
    finished = db_client.post(f"/sweeps/{sweep['id']}/cancel")
    assert finished.status_code == 409 and "is finished" in finished.json()["detail"]
    succeeded = db_client.post(f"/jobs/{done['best_job_id']}/retry")
    assert succeeded.status_code == 409 and "is succeeded; cannot retry" in succeeded.json()["detail"]


def test_hyperband_prunes_a_worse_trial_at_its_rung_and_says_why(db_client, db_settings: Settings):
    engine = get_engine(db_settings.database_url)
    config = {
        "method": "grid", "parallel": 1, "seed": 5, "metric": {"name": "Test Accuracy", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.1, 0.05, 0.02, 0.01, 0.005, 0.002]}, "epochs": {"value": 4}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    }
    sweep = db_client.post("/sweeps", json=config).json()
    outcomes = []
    while (claim := queue.claim(engine, "hb-worker", 60)) is not None:
        # The later a trial, the worse: every trial after the first in its bracket is stopped.
        base = 90 - 10 * len(outcomes)
        outcomes.append(run_trial(engine, claim, [base + epoch for epoch in range(4)]))
        sweeps.advance(engine, db_settings)
    assert len(outcomes) == 6 and "pruned" in outcomes
    done = db_client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "finished"
    pruned = [trial for trial in done["jobs"] if trial["status"] == "pruned"]
    assert all(trial["epochs_trained"] < 4 and trial["pruned_at_epoch"] == trial["epochs_trained"] for trial in pruned), done["jobs"]
    job = db_client.get(f"/jobs/{pruned[0]['id']}").json()
    assert job["status"] == "pruned" and job["pruned"]["rule"] == "hyperband"
    assert job["pruned"]["message"].startswith(f"pruned by hyperband at epoch {job['pruned']['epoch']}")
    assert job["metrics"]["epoch"] == job["pruned"]["epoch"]  # its metrics so far are kept
    assert 'trainboard_jobs{status="pruned"}' in db_client.get("/metrics").text


def test_failing_trials_stop_the_sweep_and_a_retry_takes_a_trials_place(db_client, db_settings: Settings):
    engine = get_engine(db_settings.database_url)
    sweep = db_client.post("/sweeps", json={
        "method": "random", "run_cap": 10, "parallel": 2, "seed": 1, "parameters": {"lr": {"min": 0.001, "max": 0.1}},
    }).json()
    for _ in range(3):
        claim = queue.claim(engine, "w", 60)
        queue.finish(engine, claim, "failed", error="CUDA error: an illegal memory access was encountered")
        sweeps.advance(engine, db_settings)
    failed = db_client.get(f"/sweeps/{sweep['id']}").json()
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("stopped after 3 failed trials in a row") and "illegal memory access" in failed["reason"]
    assert failed["counts"] == {"failed": 3, "cancelled": 1}  # the trial still queued was cancelled
    assert failed["trials"] == 4

    # A retry of a failed trial runs again in its place: same number, same parameters.
    first = next(trial for trial in failed["jobs"] if trial["trial_number"] == 0)
    retried = db_client.post(f"/jobs/{first['id']}/retry")
    assert retried.status_code == 201, retried.text
    retry = retried.json()
    assert (retry["sweep_id"], retry["trial_number"], retry["retry_of"]) == (sweep["id"], 0, first["id"])
    assert retry["params"]["lr"] == first["params"]["lr"]
    again = db_client.get(f"/sweeps/{sweep['id']}").json()
    assert again["status"] == "running" and again["trials"] == 4
    assert next(t for t in again["jobs"] if t["trial_number"] == 0)["id"] == retry["id"]
    # A second retry of the same failed trial: it has been replaced already.
    assert db_client.post(f"/jobs/{first['id']}/retry").status_code == 409
    # Trials of a running sweep are not deleted (the sweep would run another in their place).
    refused = db_client.delete(f"/jobs/{failed['jobs'][-1]['id']}")
    assert refused.status_code == 409 and "running sweep" in refused.json()["detail"]


# ---------------------------------------------------------------------------------------------
# SIGKILL anywhere: exactly run_cap trials, none duplicated, parallel never exceeded
# ---------------------------------------------------------------------------------------------

# A process that plays a worker with real queue calls and no training: it advances the sweeps
# (asking Optuna), claims, reports epochs, is judged, and finishes; it may be killed anywhere.
PLAYER = textwrap.dedent("""
    import random, sys, time
    from app import queue, sweeps
    from app.db import get_engine
    from app.settings import Settings
    settings = Settings(database_url=sys.argv[1], _env_file=None)
    engine = get_engine(settings.database_url)
    rng = random.Random(int(sys.argv[2]))
    while True:
        queue.reap_expired(engine)
        sweeps.advance(engine, settings)
        claim = queue.claim(engine, sys.argv[3], 1.0)
        if claim is None:
            time.sleep(0.05)
            continue
        for epoch in (1, 2, 3):
            time.sleep(rng.uniform(0, 0.05))
            accuracy = 40 + 500 * claim.params["lr"] + epoch + rng.uniform(0, 1)
            metrics = {"epoch": epoch, "test_accuracy": accuracy}
            if not queue.record_progress(engine, claim, progress={}, metrics=metrics, points=[("epoch", epoch, metrics)]):
                break
            pruning = sweeps.judge(engine, claim)
            if pruning is not None:
                queue.finish(engine, claim, "pruned", pruned=pruning.as_dict())
                break
        else:
            if rng.random() < 0.15:
                queue.finish(engine, claim, "failed", error="diverged")
            else:
                queue.finish(engine, claim, "succeeded", metrics=metrics)
""")


@pytest.mark.slow
def test_sigkills_of_any_process_leave_exactly_run_cap_trials(db_client, db_settings: Settings, tmp_path: Path):
    engine = get_engine(db_settings.database_url)
    created = [
        db_client.post("/sweeps", json={
            "method": method, "run_cap": 12, "parallel": 3, "seed": 21, "metric": {"name": "test_accuracy", "goal": "maximize"},
            "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1}, "batch_size": {"values": [16, 32, 64]}},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
        }).json()
        for method in ("random", "bayes")
    ] + [db_client.post("/sweeps", json={**GRID, "parallel": 3, "parameters": {
        "lr": {"values": [0.1, 0.03, 0.01, 0.003, 0.001]}, "batch_size": {"values": [16, 32]},
    }}).json()]
    peak = {sweep["id"]: 0 for sweep in created}
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            for sweep_id in peak:
                jobs = trial_jobs(engine, sweep_id)
                peak[sweep_id] = max(peak[sweep_id], sum(job.status in ("queued", "running") for job in jobs))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(7)
    players: list[subprocess.Popen] = []

    def start(index: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", PLAYER, db_settings.database_url, str(index), f"player-{index}"], cwd=ROOT,
        )

    try:
        players = [start(index) for index in range(3)]
        kills = 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not all(sweeps.get(engine, s["id"]).status != "running" for s in created):
            time.sleep(rng.uniform(0.3, 1.2))
            victim = rng.randrange(len(players))
            players[victim].send_signal(signal.SIGKILL)
            players[victim].wait()
            kills += 1
            players[victim] = start(100 + kills)
        assert kills >= 5
        wait_for(
            lambda: all(sweeps.get(engine, s["id"]).status != "running" for s in created), 120,
            message=lambda: json.dumps({s["id"]: db_client.get(f"/sweeps/{s['id']}").json()["counts"] for s in created}),
        )
    finally:
        watching.set()
        watcher.join()
        for player in players:
            player.kill()
            player.wait()

    for sweep in created:
        done = db_client.get(f"/sweeps/{sweep['id']}").json()
        jobs = trial_jobs(engine, sweep["id"])
        numbers = [job.trial_number for job in jobs]
        expected = 10 if sweep["method"] == "grid" else 12
        assert done["status"] in ("finished", "failed"), done
        if done["status"] == "finished":
            assert sorted(numbers) == list(range(expected)), (sweep["method"], numbers)
        assert len(numbers) == len(set(numbers)) <= expected
        assert peak[sweep["id"]] <= 3, (sweep["method"], peak)
        if sweep["method"] == "grid":
            points = [(job.params["lr"], job.params["batch_size"]) for job in jobs]
            assert len(points) == len(set(points))


# ---------------------------------------------------------------------------------------------
# End to end: real `trainboard serve` and `trainboard worker` processes train the trials
# ---------------------------------------------------------------------------------------------

TRIAL = {"epochs": {"value": 3}, "pretrained": {"value": False}, "train_subset": {"value": 64}, "test_subset": {"value": 64},
         "test_batch_size": {"value": 64}, "log_interval": {"value": 1}, "deterministic": {"value": True},
         "checkpoint_every": {"value": 0}, "wandb_watch": {"value": "off"}}


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_random_grid_and_bayes_with_hyperband_run_to_completion(database, request, make_stack):
    database_url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    stack = make_stack(database_url=database_url, **FAST_LEASES)
    stack.serve()
    configs = {
        "random": {"method": "random", "run_cap": 2, "seed": 1, "parameters": {
            **TRIAL, "lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.05}}},
        "grid": {"method": "grid", "seed": 2, "parameters": {**TRIAL, "batch_size": {"values": [16, 32]}}},
        # One bracket (max_iter / min_iter < eta): from the second trial on, a trial whose test loss
        # after epoch 1 is not the best so far is stopped there.
        "bayes": {"method": "bayes", "run_cap": 4, "parallel": 1, "seed": 3, "parameters": {
            **TRIAL, "lr": {"values": [0.05, 0.01, 0.001, 0.0001]}},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 2, "eta": 3}},
    }
    created = {}
    for method, config in configs.items():
        config = {**config, "name": f"{method}-{database}", "metric": {"name": "Test Loss", "goal": "minimize"}}
        response = stack.client.post("/sweeps", json=config)
        assert response.status_code == 201, response.text
        created[method] = response.json()
    stack.worker()
    stack.worker()
    for method, sweep in created.items():
        done = wait_for(
            lambda: (current := stack.client.get(f"/sweeps/{sweep['id']}").json())["status"] != "running" and current,
            600, interval=0.5, message=lambda: f"sweep {method} to end; logs:\n{stack.logs()}",
        )
        assert done["status"] == "finished", (done, stack.logs())
        assert done["trials"] == done["run_cap"] == (2 if method != "bayes" else 4)
        assert done["best_job_id"] is not None and done["best_value"] > 0
        best = stack.job(done["best_job_id"])
        assert best["status"] == "succeeded" and best["wandb"]["mode"] == "offline"
    grid = stack.client.get(f"/sweeps/{created['grid']['id']}").json()
    assert sorted(trial["params"]["batch_size"] for trial in grid["jobs"]) == [16, 32]
    # The hyperband sweep: a hopeless lr stopped early, within the epoch after it was judged.
    bayes = stack.client.get(f"/sweeps/{created['bayes']['id']}").json()
    pruned = [trial for trial in bayes["jobs"] if trial["status"] == "pruned"]
    assert pruned, bayes
    for trial in pruned:
        job = stack.job(trial["id"])
        # Judged at the first epoch its worker saw (an epoch here is a fraction of a second, so two
        # may arrive together) and stopped before the last one.
        assert trial["pruned_at_epoch"] in (1, 2) and trial["pruned_at_epoch"] <= trial["epochs_trained"] < 3
        assert job["pruned"]["message"].startswith(f"pruned by hyperband at epoch {trial['pruned_at_epoch']}")
        assert job["metrics"]["epoch"] == trial["epochs_trained"] and job["finished_at"] is not None


# ---------------------------------------------------------------------------------------------
# The efficiency benchmark's command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sweep_efficiency_benchmark_runs_both_searches_and_judges_its_target():
    command = [sys.executable, "-m", "bench.sweep_efficiency", "--trials", "2", "--epochs", "2", "--train-size", "64", "--test-size", "32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr
    epochs = {
        label: int(re.search(rf"^{re.escape(label)} +finished +(\d+) +\d", result.stdout, re.MULTILINE)[1])
        for label in ("without early termination", "hyperband (min_iter 1, eta 3)")
    }
    assert epochs["without early termination"] == 4
    assert 2 <= epochs["hyperband (min_iter 1, eta 3)"] <= 4
    saved = 1 - epochs["hyperband (min_iter 1, eta 3)"] / 4
    assert f"saved by hyperband: {saved:.1%} of the epochs" in result.stdout
    verdict = re.search(r"^target (met|missed): ", result.stdout, re.MULTILINE)[1]
    assert result.returncode == (0 if verdict == "met" else 1), result.stdout
