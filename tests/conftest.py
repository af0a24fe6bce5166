"""Fixtures: real databases (a SQLite file, a PostgreSQL database made for the test), a data set
in the CIFAR-10 python format, and real `trainboard serve` / `trainboard worker` processes."""

import os
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
from tests.support.cifar import TRAIN_BATCHES, write_batches
from tests.support.databases import postgres_database
from tests.support.network import free_port

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
def db_settings(settings: Settings, database_url: str) -> Settings:
    """The app's settings on each database in turn: a SQLite file, then a PostgreSQL database."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def db_client(db_settings: Settings) -> Iterator[TestClient]:
    """The app in-process on each database in turn, for what its SQL does."""
    with TestClient(create_app(db_settings), base_url=LOCAL) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# A small data set in the CIFAR-10 python format (pickled batches as torchvision reads them)
# ---------------------------------------------------------------------------------------------


def write_cifar10(root: Path, per_batch: int = 200, test_size: int = 400, seed: int = 0) -> Path:
    """Five train batches and a test batch of learnable images: each class a colour, plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(10, 3))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=count)
        images = colours[labels][:, :, None, None] + rng.normal(0, 40, size=(count, 3, 32, 32))
        return images.clip(0, 255).astype(np.uint8), labels

    train = [draw(per_batch) for _ in range(TRAIN_BATCHES)]
    test = draw(test_size)
    return write_batches(root, (np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train])), test)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


# ---------------------------------------------------------------------------------------------
# Real processes
# ---------------------------------------------------------------------------------------------


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
            "TRAINBOARD_WORK_DIR": str(tmp_path / "work"),
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

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.processes)}.log", "wb")
        self.log_files.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], env={**self.env, **(env or {})}, cwd=self.tmp_path,
            stdout=log, stderr=subprocess.STDOUT,
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

    def worker(self, *args: str, host: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A worker; with `host`, as if on another machine: its own name, scratch and local store;
        `env` adds to or replaces the stack's environment."""
        own: dict[str, str] = {}
        if host is not None:
            own = {
                "TRAINBOARD_HOST_NAME": host,
                "TRAINBOARD_WORK_DIR": str(self.tmp_path / host / "work"),
                "TRAINBOARD_ARTIFACTS_DIR": str(self.tmp_path / host / "artifacts"),
            }
        env = own | (env or {})
        return self._start("worker", "worker", "--gpus", "none", *args, env=env)

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


# ---------------------------------------------------------------------------------------------
# An S3 API: moto's standalone server, a process of its own, with a bucket per test
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """The endpoint of a running moto S3 server."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    binary = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, "moto_server exited"
        try:
            return httpx.get(endpoint, timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 60, message="moto_server to answer")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch) -> dict[str, str]:
    """AWS_* for the server and TRAINBOARD_ARTIFACTS_URL naming a fresh bucket, also set in this
    process (for in-process stores)."""
    import boto3

    bucket = f"trainboard-{os.urandom(4).hex()}"
    env = {
        "AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1", "TRAINBOARD_ARTIFACTS_URL": f"s3://{bucket}/runs",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return env


# Small enough for seconds per job on two cores, large enough to learn.
SMOKE_PARAMS = {"pretrained": False, "epochs": 2, "batch_size": 32, "test_batch_size": 200, "log_interval": 5}
