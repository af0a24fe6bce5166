"""`trainboard sync` (worker/sync.py) against real offline W&B run folders, written by wandb itself,
and a real SQLite database: an upload that fails (no W&B server to reach, no key) says why in one
line and marks nothing; one that succeeds, against a small stand-in for the W&B server started
here, records the run's URL."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app import queue
from app.db import get_engine, migrate
from app.models import JobCreate
from tests.conftest import free_port

pytestmark = pytest.mark.slow

FAKE_KEY = "k" * 40
ENTITY = "lab"


def write_offline_runs(job_dir: Path, count: int) -> list[dict[str, str]]:
    """`count` offline runs of the tutorial's project in job_dir/wandb, as a worker's attempts leave them."""
    script = (
        "import json, sys, wandb\n"
        "runs = []\n"
        f"for attempt in range({count}):\n"
        f"    run = wandb.init(mode='offline', dir={str(job_dir)!r}, project='thorough-pytorch', name='job')\n"
        "    run.log({'Test Accuracy': 50.0 + attempt, 'epoch': 1})\n"
        "    runs.append({'id': run.id, 'dir': str(run.settings.sync_dir)})\n"
        "    run.finish()\n"
        "print(json.dumps(runs))\n"
    )
    job_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_API_KEY": "", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(job_dir / "config")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


class FakeWandb(BaseHTTPRequestHandler):
    """What `wandb sync` asks of the W&B server, answered as it does: the run is created in
    ENTITY's project, its files are taken, its history stream accepted. Records the runs it got."""

    runs: set[str] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/graphql":
            self._answer({})  # the history stream, telemetry
            return
        request = json.loads(body)
        operation, variables = request.get("operationName"), request.get("variables") or {}
        if operation == "UpsertBucket":
            self.runs.add(variables["name"])
            project = {"id": "p", "name": variables.get("project"), "entity": {"id": "e", "name": variables.get("entity") or ENTITY}}
            bucket = {"id": "b", "name": variables["name"], "displayName": variables.get("displayName"), "description": None,
                      "config": "{}", "sweepName": None, "historyLineCount": 0, "project": project}
            self._answer({"data": {"upsertBucket": {"inserted": True, "bucket": bucket}}})
        elif operation == "CreateRunFiles":
            port = self.server.server_address[1]
            files = [{"name": name, "uploadUrl": f"http://127.0.0.1:{port}/upload/{name}"} for name in variables["files"]]
            self._answer({"data": {"createRunFiles": {"runID": "r", "uploadHeaders": [], "files": files}}})
        elif operation == "ServerFeaturesQuery":
            self._answer({"data": {"serverInfo": {"features": []}}})
        else:
            self._answer({"data": {}})

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_wandb() -> Iterator[str]:
    FakeWandb.runs = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWandb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def host(tmp_path: Path):
    """A worker host's settings and database: the environment `trainboard sync` runs with."""
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "TRAINBOARD_"))},
        "TRAINBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'trainboard.db'}",
        "TRAINBOARD_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "HOME": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
    }
    engine = get_engine(env["TRAINBOARD_DATABASE_URL"])
    migrate(engine)
    return env, engine


def job_with_runs(engine, tmp_path: Path, *, attempts: int, finished: bool = True, on_this_host: bool = True) -> tuple[int, list]:
    """A job that logged offline: its attempts' run folders in its W&B folder, the last one recorded."""
    job = queue.submit(engine, JobCreate(name="offline", wandb_mode="offline"), default_wandb_mode="offline", max_attempts=3)
    folder = tmp_path / "artifacts" / "jobs" / str(job.id) if on_this_host else tmp_path / "another-host" / str(job.id)
    runs = write_offline_runs(folder, attempts)
    claim = queue.claim(engine, "worker-1", 60)
    assert claim.job_id == job.id
    queue.record_wandb(engine, claim, mode="offline", url=None, run_id=runs[-1]["id"], run_dir=runs[-1]["dir"], note=None)
    if not on_this_host:
        for run in runs:
            for path in sorted(Path(run["dir"]).rglob("*"), reverse=True):
                path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
            Path(run["dir"]).rmdir()
    if finished:
        queue.finish(engine, claim, "succeeded", metrics={"test_accuracy": 51.0})
    return job.id, runs


def sync(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "sync", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )


def test_a_failed_upload_says_why_in_one_line_and_marks_nothing(host, tmp_path):
    env, engine = host
    job_id, runs = job_with_runs(engine, tmp_path, attempts=2)
    # A W&B server that cannot be reached, and W&B told to retry once only (its own setting).
    unreachable = {**env, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}",
                   "WANDB_X_GRAPHQL_RETRY_MAX": "1"}
    result = sync(unreachable, tmp_path, "--job", str(job_id))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    folders = ", ".join(sorted(Path(run["dir"]).name for run in runs))  # by name, as run_folders lists them
    assert line.startswith(f"trainboard: job {job_id} not synced: wandb sync did not upload {folders}: ")
    assert "connection refused" in line

    no_key = sync(env, tmp_path, "--all-offline")
    assert no_key.returncode == 2
    [line] = no_key.stderr.splitlines()
    assert line.startswith(f"trainboard: job {job_id} not synced: ") and line.endswith("No API key configured. Use `wandb login` to log in.")

    job = queue.get_job(engine, job_id)
    assert (job.wandb_mode, job.wandb_url) == ("offline", None)
    assert not list((tmp_path / "artifacts").rglob("*.synced"))


def test_sync_uploads_every_attempt_and_links_the_job_to_its_run(host, tmp_path, fake_wandb):
    env, engine = host
    env = {**env, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": fake_wandb}
    synced_id, runs = job_with_runs(engine, tmp_path, attempts=2)
    elsewhere_id, _ = job_with_runs(engine, tmp_path, attempts=1, on_this_host=False)
    running_id, _ = job_with_runs(engine, tmp_path, attempts=1, finished=False)

    result = sync(env, tmp_path, "--all-offline")
    assert result.returncode == 0, result.stderr
    url = f"{fake_wandb}/{ENTITY}/thorough-pytorch/runs/{runs[-1]['id']}"
    assert result.stdout.splitlines() == [
        f"job {synced_id} synced (2 runs): {url}",
        f"job {elsewhere_id} skipped: its run folder {queue.get_job(engine, elsewhere_id).wandb_dir} is not on this host; "
        f"run trainboard sync where job {elsewhere_id} ran",
    ]
    assert FakeWandb.runs == {run["id"] for run in runs}
    job = queue.get_job(engine, synced_id)
    assert (job.wandb_mode, job.wandb_url) == ("online", url)
    assert queue.get_job(engine, elsewhere_id).wandb_mode == "offline"
    assert queue.get_job(engine, running_id).wandb_mode == "offline"

    again = sync(env, tmp_path, "--job", str(synced_id))
    assert again.returncode == 0 and again.stdout.strip() == f"job {synced_id} is already on W&B: {url}"
    for job_id, reason in (
        (running_id, f"job {running_id} is running; sync its run once it has finished"),
        (elsewhere_id, f"job {elsewhere_id} not synced: its run folder"),
        (99, "job 99 not found"),
    ):
        refused = sync(env, tmp_path, "--job", str(job_id))
        assert refused.returncode == 2 and refused.stderr.startswith(f"trainboard: {reason}"), refused.stderr
    assert sync(env, tmp_path).returncode == 2  # --job or --all-offline is required
