"""GET /metrics from a real database: GPU gauges from the workers' heartbeats, gone workers dropped;
counters and histograms that deleting jobs does not take back."""

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import queue
from app.db import get_engine
from app.main import create_app
from app.models import Worker, utcnow
from app.settings import Settings
from tests.conftest import LOCAL


def test_gpu_gauges_come_from_live_workers_heartbeats(tmp_path: Path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'metrics.db'}", _env_file=None)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        engine = get_engine(settings.database_url)
        gpu = {"utilization": 0.75, "memory_used": 2.0e9, "memory_total": 8.0e10}
        queue.register_worker(engine, Worker(id="gpu-host-1", host="gpu-host", pid=1, slots=[
            {"index": 0, "device": "cuda:0", "gpu_name": "NVIDIA H100", "job_id": 3, "gpu": gpu},
            {"index": 1, "device": "cuda:1", "gpu_name": "NVIDIA H100", "job_id": None, "gpu": None},
        ]))
        queue.register_worker(engine, Worker(
            id="gone", host="old", pid=2, heartbeat_at=utcnow() - timedelta(hours=1),
            slots=[{"index": 0, "device": "cuda:0", "gpu_name": "old", "job_id": None, "gpu": gpu}],
        ))
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
        }
    labels = (("gpu", "NVIDIA H100"), ("slot", "0"), ("worker", "gpu-host-1"))
    assert samples[("trainboard_gpu_utilization_ratio", labels)] == 0.75
    assert samples[("trainboard_gpu_memory_used_bytes", labels)] == 2.0e9
    assert samples[("trainboard_gpu_memory_total_bytes", labels)] == 8.0e10
    assert samples[("trainboard_workers_alive", ())] == 1
    assert not any(dict(key[1]).get("worker") == "gone" for key in samples)
    assert not any(dict(key[1]).get("slot") == "1" for key in samples)


def test_deleting_jobs_never_decreases_the_counters_and_histograms(db_client, db_settings):
    engine = get_engine(db_settings.database_url)
    job_ids = [db_client.post("/jobs", json={}).json()["id"] for _ in range(3)]
    for status in ("succeeded", "failed"):
        queue.finish(engine, queue.claim(engine, "worker-a", 60), status)
    db_client.post(f"/jobs/{job_ids[2]}/cancel")

    def scrape() -> dict[tuple, float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(db_client.get("/metrics").text)
            for sample in family.samples
        }

    before = scrape()
    kept = {key: value for key, value in before.items() if not key[0].startswith(("trainboard_jobs", "trainboard_workers"))}
    assert before[("trainboard_job_outcomes_total", (("status", "cancelled"),))] == 1
    assert before[("trainboard_job_run_duration_seconds_count", ())] == 2
    for job_id in job_ids:
        assert db_client.delete(f"/jobs/{job_id}").status_code == 204
    after = scrape()
    assert {key: after[key] for key in kept} == kept
    assert after[("trainboard_jobs", (("status", "succeeded"),))] == 0  # a gauge: what there is now

    db_client.post("/jobs", json={})
    queue.finish(engine, queue.claim(engine, "worker-a", 60), "succeeded")
    assert scrape()[("trainboard_job_outcomes_total", (("status", "succeeded"),))] == 2
