"""Chaos: workers SIGKILLed at random while four jobs train, on both databases, with short leases.
Every job must still succeed, no attempt may run on two workers, and no epoch may be recorded twice."""

import random
import re
import time

import pytest

from tests.conftest import wait_for
from tests.test_worker import FAST_LEASES, TINY_EPOCHS

pytestmark = pytest.mark.slow

JOBS = 4
EPOCHS = 2
WORKERS = 2
CHAOS_SECONDS = 20
MAX_ATTEMPTS = 30
HEADER = re.compile(r"^==== attempt (\d+) on (\S+) ", re.MULTILINE)


def test_random_worker_kills_lose_no_job_and_run_none_twice(database_url: str, make_stack):
    chance = random.Random(13)
    stack = make_stack(database_url=database_url, TRAINBOARD_MAX_ATTEMPTS=str(MAX_ATTEMPTS), **FAST_LEASES)
    stack.serve()
    # Two batches an epoch: each job is mostly its process starting, which the kills interrupt.
    tiny = {**TINY_EPOCHS, "train_subset": 32, "test_subset": 16, "test_batch_size": 16}
    jobs = [stack.submit(**tiny, epochs=EPOCHS, checkpoint_every=1, name=f"chaos-{n}")["id"] for n in range(JOBS)]
    workers = [stack.worker() for _ in range(WORKERS)]

    def finished() -> bool:
        return all(stack.job(job_id)["status"] in ("succeeded", "failed", "cancelled") for job_id in jobs)

    # A worker killed every 3 to 6 s and another started in its place, until the time is up.
    kills = 0
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline and not finished():
        time.sleep(chance.uniform(3, 6))
        doomed = workers.pop(chance.randrange(len(workers)))
        doomed.kill()
        doomed.wait()
        kills += 1
        workers.append(stack.worker())
    assert kills >= 3

    wait_for(finished, 240, interval=0.5, message=lambda: f"every job to finish after {kills} kills; logs:\n{stack.logs()}")
    for job_id in jobs:
        job = stack.job(job_id)
        assert job["status"] == "succeeded", (job_id, job["error"])
        assert 1 <= job["attempts"] <= MAX_ATTEMPTS
        # Each attempt started on one worker only: its header appears once.
        attempts = [int(number) for number, _worker in HEADER.findall(stack.client.get(f"/jobs/{job_id}/log").text)]
        assert len(attempts) == len(set(attempts)) and max(attempts) == job["attempts"], (job_id, attempts)
        epochs = [point["step"] for point in stack.client.get(f"/jobs/{job_id}/metrics", params={"kind": "epoch"}).json()]
        assert sorted(epochs) == list(range(1, EPOCHS + 1)), (job_id, epochs)
