"""Fixtures: real databases (a SQLite file, a PostgreSQL database made for the test), a data set
in the CIFAR-10 python format, and real `trainboard serve` / `trainboard worker` processes."""

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine

from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.settings import Settings
from bench.queue_latency import postgres_database

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TRAINBOARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# In-process clients address the app as a browser on the same machine does; without a token the
# app answers only requests addressed to localhost.
LOCAL = "http://127.0.0.1"


def wait_for(
    condition: Callable[[], Any], timeout: float, interval: float = 0.1, message: str | Callable[[], str] = "condition"
) -> Any:
    """Poll until condition() is truthy; fail with `message` (or what it returns, when called
    only then, e.g. to show the logs of that moment) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message() if callable(message) else message}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'trainboard.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards. In CI it must be reachable."""
    with ExitStack() as databases:
        try:
            url = databases.enter_context(postgres_database(POSTGRES_URL, prefix="trainboard_test"))
        except Exception as exc:
            if IN_CI:
                pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable in CI: {exc}")
            pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str:
    """Every queue test runs on both databases."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """An app's settings on a SQLite file of the test's own."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        artifacts_dir=tmp_path / "artifacts",
        data_dir=tmp_path / "data",
        wandb_mode="offline",
        _env_file=None,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process (migrations run at start-up), on that file."""
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client


@pytest.fixture
def database_client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app in-process on SQLite and on PostgreSQL, in turn."""
    app_settings = Settings(
        database_url=database_url, artifacts_dir=tmp_path / "artifacts", data_dir=tmp_path / "data",
        wandb_mode="offline", _env_file=None,
    )
    with TestClient(create_app(app_settings), base_url=LOCAL) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# A small data set in the CIFAR-10 python format (pickled batches as torchvision reads them)
# ---------------------------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 200, test_size: int = 400, seed: int = 0) -> Path:
    """Five train batches and a test batch of learnable images: each class a colour, plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(10, 3))
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count: int, label: str) -> dict:
        labels = rng.integers(0, 10, size=count)
        images = colours[labels][:, :, None, None] + rng.normal(0, 40, size=(count, 3, 32, 32))
        data = images.clip(0, 255).astype(np.uint8).reshape(count, 3072)
        return {"batch_label": label, "labels": labels.tolist(), "data": data,
                "filenames": [f"{label}_{i}.png" for i in range(count)]}

    for index in range(1, 6):
        with open(folder / f"data_batch_{index}", "wb") as stream:
            pickle.dump(batch(per_batch, f"training batch {index} of 5"), stream)
    with open(folder / "test_batch", "wb") as stream:
        pickle.dump(batch(test_size, "testing batch 1 of 1"), stream)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, stream)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


# ---------------------------------------------------------------------------------------------
# Real processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """`trainboard serve` and any number of `trainboard worker` processes on one database."""

    def __init__(self, tmp_path: Path, database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TRAINBOARD_DATABASE_URL": database_url,
            "TRAINBOARD_DATA_DIR": str(data_dir),
            "TRAINBOARD_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "TRAINBOARD_CIFAR_VERIFY": "false",
            "TRAINBOARD_WANDB_MODE": "offline",
            "TRAINBOARD_POLL_SECONDS": "0.2",
            "WANDB_API_KEY": "",
            "WANDB_SILENT": "true",
            "TORCH_HOME": str(tmp_path / "torch"),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.processes: list[subprocess.Popen] = []
        self.log_files: list = []
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.processes)}.log", "wb")
        self.log_files.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], env=self.env, cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def serve(self) -> subprocess.Popen:
        process = self._start("serve", "serve", "--port", str(self.port))

        def healthy():
            assert process.poll() is None, f"serve exited: {self.logs()}"
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, message="the app to answer /healthz")
        return process

    def worker(self, *args: str) -> subprocess.Popen:
        return self._start("worker", "worker", "--gpus", "none", *args)

    def submit(self, **params) -> dict:
        response = self.client.post("/jobs", json=params)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> dict:
        return self.client.get(f"/jobs/{job_id}").json()

    def wait_status(self, job_id: int, statuses: tuple[str, ...], timeout: float = 240) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id))["status"] in statuses and job,
            timeout, interval=0.2, message=lambda: f"job {job_id} to reach {statuses}; logs:\n{self.logs()}",
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.tmp_path.glob("*.log")))

    def stop(self) -> None:
        self.client.close()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.log_files:
            log.close()


@pytest.fixture
def make_stack(tmp_path: Path, cifar_dir: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def factory(database_url: str | None = None, data_dir: Path | None = None, **extra_env: str) -> Stack:
        stack = Stack(tmp_path, database_url or f"sqlite:///{tmp_path / 'trainboard.db'}", data_dir or cifar_dir, extra_env)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


# Small enough for seconds per job on two cores, large enough to learn.
SMOKE_PARAMS = {"pretrained": False, "epochs": 2, "batch_size": 32, "test_batch_size": 200, "log_interval": 5}
