"""The `trainboard` command against real processes: up, and submit | status | list | logs | cancel | retry |
download | sweep | sweep-status and GET /metrics for scripts."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import queue, reads, sweeps
from app.db import get_engine
from app.models import JobCreate, Worker
from app.settings import Settings
from tests.conftest import wait_for
from tests.test_worker import alive

pytestmark = pytest.mark.slow

TINY = ["dataset=synthetic", "pretrained=false", "epochs=1", "batch_size=32", "train_subset=128", "test_subset=64"]


def trainboard(stack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**stack.env, "TRAINBOARD_URL": stack.base_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def samples(stack) -> dict[tuple[str, tuple], float]:
    response = stack.client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_submit_wait_status_cancel_and_metrics(make_stack, tmp_path):
    stack = make_stack(TRAINBOARD_LOG_FORMAT="json")
    stack.serve()
    before = samples(stack)
    assert before[("trainboard_jobs", (("status", "succeeded"),))] == 0
    assert before[("trainboard_workers_alive", ())] == 0

    stack.worker()
    wait_for(lambda: samples(stack)[("trainboard_workers_alive", ())] == 1, 60, message="the worker to register")

    done = trainboard(stack, "submit", "--wait", *TINY, "wandb_mode=offline", 'tags=["cli"]', "name=from cli")
    assert done.returncode == 0, done.stdout + done.stderr
    first_line, *_, last_line = done.stdout.strip().splitlines()
    assert first_line.startswith("job 1 queued: ") and first_line.endswith(f"{stack.base_url}/jobs/1")
    assert last_line.startswith("job 1 succeeded: test accuracy ") and "wandb sync " in last_line
    job = stack.job(1)
    assert job["name"] == "from cli" and job["params"]["tags"] == ["cli"] and job["params"]["epochs"] == 1

    status = trainboard(stack, "status", "1")
    assert status.returncode == 0 and status.stdout.startswith("job 1 succeeded, epoch 1/1, test accuracy ")

    failing = trainboard(stack, "submit", "--wait", *TINY, "pretrained=true", "wandb_mode=disabled")
    assert failing.returncode == 1
    assert "failed: the pretrained ResNet-18 weights could not be downloaded" in failing.stdout.strip().splitlines()[-1]

    refused = trainboard(stack, "submit", "epochs=0")
    assert refused.returncode == 2 and "epochs" in refused.stderr and "422" in refused.stderr

    after = samples(stack)
    assert after[("trainboard_jobs", (("status", "succeeded"),))] == 1
    assert after[("trainboard_jobs", (("status", "failed"),))] == 1
    assert after[("trainboard_job_outcomes_total", (("status", "succeeded"),))] == 1
    assert after[("trainboard_job_queue_wait_seconds_count", ())] == 2
    assert after[("trainboard_job_run_duration_seconds_count", ())] == 2
    assert after[("trainboard_job_run_duration_seconds_sum", ())] > 0

    # Cancel a job that is still queued: the only worker is stopped first.
    stack.processes[-1].terminate()
    stack.processes[-1].wait(timeout=40)
    queued = trainboard(stack, "submit", *TINY)
    job_id = queued.stdout.split()[1]
    cancelled = trainboard(stack, "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job_id} cancelled"
    assert trainboard(stack, "cancel", job_id).returncode == 2  # 409: already cancelled
    assert trainboard(stack, "status", "999").returncode == 2
    assert samples(stack)[("trainboard_job_outcomes_total", (("status", "cancelled"),))] == 1

    # Structured logs: one JSON object per line from both processes; a job's lines carry its id.
    events = {}
    for name in ("serve-0.log", "worker-1.log"):
        lines = (tmp_path / name).read_text().splitlines()
        assert lines, name
        events[name] = [json.loads(line) for line in lines]
    assert any(e.get("job_id") == 1 and e["message"] == "job 1 queued" for e in events["serve-0.log"])
    job_lines = [e for e in events["worker-1.log"] if e.get("job_id") == 1]
    assert any("succeeded" in e["message"] for e in job_lines)
    assert all(e["attempt"] == 1 and e["worker_id"] for e in job_lines)


def test_submit_warns_without_a_worker_and_status_says_why_a_job_waits(make_stack):
    stack = make_stack()
    stack.serve()
    waiting = "no worker is alive; start one with `trainboard worker`"
    submitted = trainboard(stack, "submit", "tags=sweep", "name=first")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == f"job 1 queued: {stack.base_url}/jobs/1"
    assert submitted.stderr.strip() == f"trainboard: warning: {waiting}; the job waits until one does"
    assert stack.job(1)["params"]["tags"] == ["sweep"]
    assert trainboard(stack, "status", "1").stdout.strip() == f"job 1 queued, waiting: {waiting}"

    # A live worker with one free slot: it takes job 1 next; job 2 waits behind it.
    queue.register_worker(get_engine(stack.env["TRAINBOARD_DATABASE_URL"]), Worker(
        id="one-slot", host="gpu-host", pid=1, slots=[{"index": 0, "device": "cuda:0", "job_id": None}],
    ))
    second = trainboard(stack, "submit", "tags=a, b")
    assert second.returncode == 0 and second.stderr == "", second.stderr
    assert stack.job(2)["params"]["tags"] == ["a", "b"]
    assert trainboard(stack, "status", "1").stdout.strip() == "job 1 queued, position 1 in the queue"
    assert trainboard(stack, "status", "2").stdout.strip() == (
        "job 2 queued, waiting: the only worker slot is busy; position 2 in the queue"
    )

    refused = trainboard(stack, "submit", "learning_rate=0.1")
    assert refused.returncode == 2
    assert "learning_rate: Extra inputs are not permitted; did you mean `lr`?" in refused.stderr


def test_submit_help_lists_every_field_with_its_default_and_bounds():
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in JobCreate.model_fields:
        assert re.search(rf"^  {name} +default ", result.stdout, re.MULTILINE), name
    for line in (
        "  batch_size         default 64; 1 to 4096",
        "  lr                 default 0.01; more than 0, at most 10",
        "  model              default resnet18; resnet18 | resnet18_cifar",
        "  pretrained         default true; true | false",
        "  train_subset       default none; 1 to 50000",
        "  tags               default none; comma-separated",
        "  preset             default tutorial; tutorial | fast94",
    ):
        assert line + "\n" in result.stdout, line


def test_up_runs_app_and_worker_and_a_stop_hands_running_jobs_back(make_stack, tmp_path):
    stack = make_stack()
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(stack.port), "--gpus", "none"],
        env=stack.env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _answers(stack), 60, message="trainboard up to serve")
        job = stack.submit(**SLOW_JOB)
        wait_for(lambda: stack.job(job["id"])["progress"].get("batch", 0) >= 1, 120, message="the job to train")
        up.terminate()
        assert up.wait(timeout=40) == 128 + 15
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    # The worker stopped too, and handed its job back without spending an attempt.
    job = queue.get_job(get_engine(stack.env["TRAINBOARD_DATABASE_URL"]), job["id"])
    assert (job.status, job.attempts) == ("queued", 0)
    worker_lines = (tmp_path / "up.log").read_text()
    assert "running jobs go back to the queue" in worker_lines and "stopped" in worker_lines


def test_a_killed_up_takes_its_worker_with_it(make_stack, tmp_path):
    stack = make_stack()
    engine = get_engine(stack.env["TRAINBOARD_DATABASE_URL"])
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(stack.port), "--gpus", "none"],
        env=stack.env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        [worker] = wait_for(lambda: _answers(stack) and reads.list_workers(engine), 60, message="the worker of trainboard up to register")
    finally:
        up.kill()
        up.wait()
        log.close()
    try:
        wait_for(lambda: not alive(worker.pid), 10, message=f"worker {worker.pid} to die with its trainboard up")
    finally:
        if alive(worker.pid):
            os.kill(worker.pid, signal.SIGKILL)


SLOW_JOB = {
    "dataset": "synthetic", "pretrained": False, "epochs": 100, "batch_size": 16, "train_subset": 64,
    "test_subset": 32, "test_batch_size": 32, "log_interval": 1, "wandb_mode": "disabled",
}


def _answers(stack) -> bool:
    try:
        return stack.client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_list_logs_retry_and_download_against_a_real_worker(make_stack, tmp_path):
    stack = make_stack()
    stack.serve()
    # Followed from before it starts: every byte of the log, once, then the job's exit code.
    job_id = trainboard(stack, "submit", *TINY, "wandb_mode=disabled", "name=followed").stdout.split()[1]
    follower = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "logs", job_id, "--follow"],
        env={**stack.env, "TRAINBOARD_URL": stack.base_url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stack.worker()
    followed, errors = follower.communicate(timeout=240)
    assert follower.returncode == 0, errors
    log = stack.client.get(f"/jobs/{job_id}/log").text
    assert followed == log and "trainboard: epoch 1/1 test accuracy" in followed
    assert trainboard(stack, "logs", job_id).stdout == log

    failing = trainboard(stack, "submit", "--wait", *TINY, "pretrained=true", "wandb_mode=disabled", "name=doomed")
    failed_id = failing.stdout.split()[1]
    assert failing.returncode == 1
    assert trainboard(stack, "logs", failed_id, "--follow").returncode == 1

    listing = trainboard(stack, "list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "NAME", "PROGRESS", "TEST", "ACC.", "AGE"]
    assert rows[0].split()[:3] == [failed_id, "failed", "doomed"]
    assert rows[1].split()[:6] == [job_id, "succeeded", "followed", "epoch", "1/1", rows[1].split()[5]]
    assert re.search(r"\d+\.\d\d%\s+\d+[smhd] ago$", rows[1])
    only = trainboard(stack, "list", "--status", "succeeded", "--json")
    assert [job["id"] for job in json.loads(only.stdout)["items"]] == [int(job_id)]
    assert trainboard(stack, "list", "--q", "DOOM").stdout.splitlines()[1].split()[0] == failed_id
    assert trainboard(stack, "list", "--limit", "1").stdout.splitlines()[-1] == "(1 of 2; --limit shows more)"
    assert trainboard(stack, "list", "--q", "nothing-like-it").stdout == "no jobs\n"
    assert trainboard(stack, "list", "--status", "lost").returncode == 2  # argparse refuses it

    retried = trainboard(stack, "retry", failed_id)
    assert retried.returncode == 0, retried.stderr
    retry_id = retried.stdout.split()[1]
    assert retried.stdout.startswith(f"job {retry_id} queued (retry of job {failed_id}): {stack.base_url}/jobs/{retry_id}")
    assert stack.job(int(retry_id))["retry_of"] == int(failed_id)
    refused = trainboard(stack, "retry", job_id)
    assert refused.returncode == 2 and "409" in refused.stderr and "succeeded" in refused.stderr

    model = stack.client.get(f"/jobs/{job_id}/artifacts/model.pth").content
    saved = trainboard(stack, "download", job_id, "-o", str(tmp_path / "weights.pth"))
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "weights.pth").read_bytes() == model
    assert saved.stdout.strip() == f"job {job_id}: model.pth ({len(model) / 1e6:.1f} MB) saved to {tmp_path / 'weights.pth'}"
    (tmp_path / "into").mkdir()
    assert trainboard(stack, "download", job_id, "model.pth", "-o", str(tmp_path / "into")).returncode == 0
    assert (tmp_path / "into" / "model.pth").read_bytes() == model
    missing = trainboard(stack, "download", failed_id, "-o", str(tmp_path / "none.pth"))
    assert missing.returncode == 2 and "404" in missing.stderr and not list(tmp_path.glob("none.pth*"))
    for command in (("logs", "999"), ("retry", "999"), ("download", "999")):
        assert trainboard(stack, *command).returncode == 2, command


def test_client_commands_send_the_token(make_stack):
    token = "cli-token-0123456789-abcdef-0123"
    stack = make_stack(TRAINBOARD_TOKEN=token)
    stack.serve()
    env = {**stack.env, "TRAINBOARD_URL": stack.base_url}
    without = {key: value for key, value in env.items() if key != "TRAINBOARD_TOKEN"}

    def run(environment, *args):
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=environment, capture_output=True, text=True, timeout=60)

    assert run(env, "submit", "name=secret").returncode == 0
    assert run(env, "list").stdout.splitlines()[1].split()[:3] == ["1", "queued", "secret"]
    refused = run(without, "list")
    assert refused.returncode == 2 and "401" in refused.stderr
    assert run(without, "list", "--token", token).returncode == 0
    assert run(env, "logs", "1").returncode == 0
    assert run(without, "logs", "1").returncode == 2


def test_pause_and_resume_from_the_cli(make_stack):
    stack = make_stack()
    stack.serve()
    trainboard(stack, "submit", *TINY)
    paused = trainboard(stack, "pause", "1")
    assert paused.returncode == 0 and paused.stdout.strip() == "job 1 paused"
    assert stack.job(1)["status"] == "paused"
    again = trainboard(stack, "pause", "1")
    assert again.returncode == 2 and "job 1 is paused; cannot pause it" in again.stderr
    resumed = trainboard(stack, "resume", "1")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "job 1 queued: it continues from its checkpoint"
    assert stack.job(1)["status"] == "queued"
    assert trainboard(stack, "resume", "99").returncode == 2


# ---------------------------------------------------------------------------------------------
# Sweeps. The test plays the worker: it claims each trial from the database the real app serves,
# reports an epoch, ends it, and advances the sweep as a worker's slot does before it claims.
# ---------------------------------------------------------------------------------------------

GRID_SWEEP = """\
name: cli-grid
method: grid
metric:
  name: Test Accuracy
  goal: maximize
parallel: 1
parameters:
  lr:
    values: [0.001, 0.01, 0.1]
  epochs:
    value: 3
  dataset:
    value: synthetic
"""
# What each trial reports, by its lr: accuracy after its epoch, and whether hyperband stopped it there.
OUTCOMES = {0.001: (40.0, True), 0.01: (60.0, False), 0.1: (80.0, False)}
BEST_RUN = "https://wandb.ai/lab/thorough-pytorch/runs/best0001"


class Follower:
    """A `trainboard` command running in the background, its output lines collected as they come."""

    def __init__(self, stack, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], env={**stack.env, "TRAINBOARD_URL": stack.base_url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.rstrip("\n") for line in self.process.stdout))
        self.reader.start()

    def wait_for_line(self, predicate, what: str) -> str:
        return wait_for(
            lambda: next((line for line in list(self.lines) if predicate(line)), None), 60,
            message=lambda: f"{what}; output so far: {self.lines}, exit code: {self.process.poll()}",
        )

    def finish(self) -> tuple[int, str]:
        """Its exit code and what it wrote to stderr, once it has ended."""
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, errors


def play_trial(engine, settings: Settings) -> int:
    """Claim the next trial, report its one epoch and end it as OUTCOMES says; then advance the sweep."""
    claim = wait_for(lambda: queue.claim(engine, "cli-test", 60), 30, message="a trial to claim")
    accuracy, pruned = OUTCOMES[claim.params["lr"]]
    queue.record_progress(
        engine, claim, progress={"epoch": 1, "epochs": 3, "batch": 4, "batches": 4},
        metrics={"test_accuracy": accuracy}, points=[("epoch", 1, {"epoch": 1, "test_accuracy": accuracy})],
    )
    if accuracy == max(value for value, _ in OUTCOMES.values()):
        queue.record_wandb(engine, claim, mode="online", url=BEST_RUN, run_id="best0001", run_dir=None, note=None)
    if pruned:
        rule = sweeps.Pruning("hyperband", 1, 0, accuracy, f"pruned by hyperband at epoch 1 (rung 0, eta 3): test_accuracy {accuracy:g} was not in the best 1/3")
        assert queue.finish(engine, claim, "pruned", pruned=rule.as_dict())
    else:
        assert queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": accuracy})
    sweeps.advance(engine, settings)
    return claim.job_id


def test_sweep_wait_follows_it_to_its_best_trial_and_sweep_status_lists_the_trials(make_stack, tmp_path):
    stack = make_stack()
    stack.serve()
    database_url = stack.env["TRAINBOARD_DATABASE_URL"]
    engine = get_engine(database_url)
    settings = Settings(database_url=database_url, wandb_mode="offline", _env_file=None)
    (tmp_path / "sweep.yaml").write_text(GRID_SWEEP)

    follower = Follower(stack, "sweep", str(tmp_path / "sweep.yaml"), "--wait")
    first = follower.wait_for_line(lambda line: line.startswith("sweep 1 "), "the sweep's URL")
    assert first == f"sweep 1 running: {stack.base_url}/sweeps/1 (grid, 3 trials, 1 at once)"
    follower.wait_for_line(lambda line: line == "sweep 1 running, 0/3 trials done, 0 running, 1 queued", "the first progress line")

    first_trial = play_trial(engine, settings)
    accuracy, pruned = OUTCOMES[stack.job(first_trial)["params"]["lr"]]
    follower.wait_for_line(
        lambda line: line == f"sweep 1 running, 1/3 trials done{' (1 pruned)' if pruned else ''}, 0 running, 1 queued, "
        f"best test accuracy {accuracy:.2f}% (job {first_trial})",
        "the line after the first trial",
    )
    ids = [first_trial, play_trial(engine, settings), play_trial(engine, settings)]
    assert follower.finish() == (0, "")
    best = next(job_id for job_id in ids if stack.job(job_id)["params"]["lr"] == 0.1)
    trial_number = stack.job(best)["trial_number"]
    assert follower.lines[-2] == f"sweep 1 finished, 3/3 trials done (1 pruned), 0 running, best test accuracy 80.00% (job {best})"
    assert follower.lines[-1] == f"sweep 1 finished: best test accuracy 80.00% from job {best} (trial {trial_number}): lr=0.1; W&B: {BEST_RUN}"

    status = trainboard(stack, "sweep-status", "1")
    assert status.returncode == 0, status.stderr
    summary, about, best_line, header, *rows = status.stdout.splitlines()
    assert summary == follower.lines[-2]
    assert about == f"cli-grid: grid, test_accuracy (maximize), 1 at once, seed {stack.client.get('/sweeps/1').json()['seed']}: {stack.base_url}/sweeps/1"
    assert best_line == f"best test accuracy 80.00% from job {best} (trial {trial_number}): lr=0.1"
    assert header.split() == ["TRIAL", "JOB", "STATUS", "TEST", "ACCURACY", "EPOCHS", "lr"]
    assert [row.split()[2:] for row in rows] == [
        ["succeeded", "80.00%", "1", "0.1"], ["succeeded", "60.00%", "1", "0.01"], ["pruned", "40.00%", "1", "0.001"],
    ]
    assert json.loads(trainboard(stack, "sweep-status", "1", "--json").stdout)["best_job_id"] == best

    # A pruned trial is done, not failed: `status` and `logs --follow` exit 0 for it.
    pruned_id = int(rows[2].split()[1])
    pruned_status = trainboard(stack, "status", str(pruned_id))
    assert pruned_status.returncode == 0, pruned_status.stdout
    assert pruned_status.stdout.splitlines() == [
        f"job {pruned_id} pruned, epoch 1/3, test accuracy 40.00%",
        f"job {pruned_id} pruned by hyperband at epoch 1 (rung 0, eta 3): test_accuracy 40 was not in the best 1/3; W&B: not started",
    ]
    assert trainboard(stack, "logs", str(pruned_id), "--follow").returncode == 0
    listed = trainboard(stack, "list", "--sweep", "1")
    assert sorted(int(row.split()[0]) for row in listed.stdout.splitlines()[1:]) == sorted(ids)


def test_sweep_refusals_a_json_config_and_a_cancelled_sweep(make_stack, tmp_path):
    stack = make_stack()
    stack.serve()
    (tmp_path / "bad.yaml").write_text("method: random\nrun_cap: 4\nparameters:\n  lr:\n    distribution: log_uniform_values\n    min: 0.001\n")
    refused = trainboard(stack, "sweep", str(tmp_path / "bad.yaml"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == "trainboard: POST /sweeps answered 422: parameters.lr: log_uniform_values needs min and max"
    (tmp_path / "typo.json").write_text('{"method": "random", "run_cap": 2,}')
    not_json = trainboard(stack, "sweep", str(tmp_path / "typo.json"))
    assert not_json.returncode == 2 and "422: the body is not valid JSON" in not_json.stderr and "line 1 column" in not_json.stderr
    missing = trainboard(stack, "sweep", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and f"cannot read {tmp_path / 'none.yaml'}: No such file or directory" in missing.stderr
    assert stack.client.get("/sweeps").json()["total"] == 0
    unknown = trainboard(stack, "sweep-status", "99")
    assert unknown.returncode == 2 and "404" in unknown.stderr

    # JSON by its content, whatever the file's name; followed until it is cancelled.
    config = {"method": "random", "run_cap": 5, "parallel": 2, "parameters": {"lr": {"min": 0.001, "max": 0.1}}}
    (tmp_path / "sweep.conf").write_text(json.dumps(config))
    follower = Follower(stack, "sweep", "--wait", str(tmp_path / "sweep.conf"))
    follower.wait_for_line(lambda line: line == "sweep 1 running, 0/5 trials done, 0 running, 2 queued", "the sweep's trials")
    assert stack.client.get("/sweeps/1").json()["config"] == config

    status = trainboard(stack, "sweep-status", "1")
    assert status.returncode == 0
    header, *rows = status.stdout.splitlines()[3:]
    assert header.split() == ["TRIAL", "JOB", "STATUS", "TEST", "ACCURACY", "EPOCHS", "lr"]
    assert sorted(row.split()[:3] for row in rows) == [["0", "1", "queued"], ["1", "2", "queued"]]
    assert status.stdout.splitlines()[2] == "no trial has reported test_accuracy yet"

    assert stack.client.post("/sweeps/1/cancel").status_code == 200
    assert follower.finish() == (1, "")
    assert follower.lines[-1] == "sweep 1 cancelled: cancelled by request"
    cancelled = trainboard(stack, "sweep-status", "1")
    assert cancelled.returncode == 1
    assert cancelled.stdout.splitlines()[:3] == [
        "sweep 1 cancelled, 2/5 trials done, 0 running", f"sweep-1: random, test_accuracy (maximize), 2 at once, "
        f"seed {stack.client.get('/sweeps/1').json()['seed']}: {stack.base_url}/sweeps/1", "why it ended: cancelled by request",
    ]
