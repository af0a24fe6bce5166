"""Which device a worker trains on: `--gpus` refuses GPUs that are not there rather than fall back
to the CPU, `auto` falls back with a warning, and every attempt records its device. This machine
has no GPU; CUDA_VISIBLE_DEVICES="" makes that so on one that has."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.support.network import free_port

TINY_JOB = {
    "dataset": "synthetic", "pretrained": False, "epochs": 1, "train_subset": 64, "test_subset": 32,
    "batch_size": 32, "test_batch_size": 32, "log_interval": 1, "wandb_mode": "disabled",
}


@pytest.mark.parametrize("gpus", ["all", "0", "0,1"])
def test_asking_for_gpus_that_are_not_there_refuses_to_start_and_says_why(gpus: str, tmp_path: Path):
    database = tmp_path / "trainboard.db"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRAINBOARD_DATABASE_URL": f"sqlite:///{database}"}
    finished = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--gpus", gpus], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode == 2, finished.stderr
    [message] = finished.stderr.strip().splitlines()
    assert message.startswith(f"trainboard worker: --gpus {gpus} asks for ")
    assert 'CUDA_VISIBLE_DEVICES is set to "" (empty: no GPU is visible)' in message
    assert "torch.cuda.is_available() is false" in message
    assert "--gpus none" in message
    assert not database.exists()  # refused before it touched the database


def test_up_stops_when_its_worker_refuses_the_gpus_with_the_workers_exit_code(tmp_path: Path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRAINBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'trainboard.db'}"}
    finished = subprocess.run(
        [sys.executable, "-m", "app.cli", "up", "--port", str(free_port()), "--gpus", "all"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode == 2, finished.stderr
    assert "trainboard worker: --gpus all asks for every GPU" in finished.stderr


@pytest.mark.slow
def test_auto_without_a_gpu_trains_on_one_cpu_slot_with_a_warning_and_each_job_records_its_device(make_stack, tmp_path: Path):
    stack = make_stack(CUDA_VISIBLE_DEVICES="")
    stack.serve()
    worker = stack.worker("--gpus", "auto")
    worker_log = tmp_path / f"worker-{len(stack.processes) - 1}.log"
    wait_for(lambda: "started with 1 slot(s): cpu" in worker_log.read_text(), 120, message=stack.logs)
    assert "WARNING trainboard.worker: no GPU found (CUDA_VISIBLE_DEVICES is set to \"\"" in worker_log.read_text()

    wanted_gpu = stack.submit(**TINY_JOB, name="wanted-gpu", use_cuda=True)
    on_cpu = stack.submit(**TINY_JOB, name="on-cpu", use_cuda=False)
    for submitted in (wanted_gpu, on_cpu):
        job = stack.wait_status(submitted["id"], ("succeeded", "failed"))
        assert job["status"] == "succeeded", job["error"]
        [run] = job["runs"]
        assert run == {"attempt": 1, "worker": run["worker"], "host": job["host"], "device": "cpu"}
        assert run["worker"].startswith(f"{job['host']}-{worker.pid}-")
        assert job["device"] == "cpu"

    page = stack.client.get(f"/jobs/{wanted_gpu['id']}", headers={"Accept": "text/html"}).text
    assert "use_cuda was true but this attempt trained on the CPU: the worker had no GPU" in page
    assert 'id="trained-on"' in page and "attempt 1: <strong>cpu</strong>" in page
    page = stack.client.get(f"/jobs/{on_cpu['id']}", headers={"Accept": "text/html"}).text
    assert "attempt 1: <strong>cpu</strong>" in page and "use_cuda was true" not in page
    listing = stack.client.get("/", headers={"Accept": "text/html"}).text
    assert listing.count('<td class="device"><span title="cpu on ') == 2

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
