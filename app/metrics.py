"""GET /metrics in the Prometheus text format, computed from the database at each scrape.

The database is the only state shared by the app and the workers, so every app replica reports
the same numbers and nothing is lost when the app restarts. Deleted jobs still count: their
outcomes and times stay in deleted_jobs, so the counters and histograms never go down.
"""

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import Engine, func, select, union_all

from app import reads
from app.db import get_engine, session_scope
from app.models import FINISHED_STATUSES, STATUSES, DeletedJob, Job, as_utc, utcnow

router = APIRouter()

QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RUN_DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


def _histogram(name: str, documentation: str, values: Iterable[float], bounds: tuple[float, ...]) -> HistogramMetricFamily:
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
    cumulative, running = [], 0
    for bound, count in zip((*map(str, bounds), "+Inf"), counts):
        running += count
        cumulative.append((bound, running))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets=cumulative, sum_value=total)
    return family


class DatabaseCollector:
    def __init__(self, engine: Engine, lease_seconds: float):
        self.engine = engine
        self.lease_seconds = lease_seconds

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.engine) as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            deleted = dict(session.execute(select(DeletedJob.status, func.count()).group_by(DeletedJob.status)).all())
            times = session.execute(union_all(*(
                select(table.created_at, table.started_at, table.finished_at).where(table.started_at.is_not(None))
                for table in (Job, DeletedJob)
            ))).all()

        jobs = GaugeMetricFamily("trainboard_jobs", "Jobs by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], by_status.get(status, 0))
        yield jobs

        outcomes = CounterMetricFamily("trainboard_job_outcomes", "Jobs that ended, by how", labels=["status"])
        for status in FINISHED_STATUSES:
            outcomes.add_metric([status], by_status.get(status, 0) + deleted.get(status, 0))
        yield outcomes

        yield _histogram(
            "trainboard_job_queue_wait_seconds", "From submission to the first start",
            ((as_utc(row.started_at) - as_utc(row.created_at)).total_seconds() for row in times), QUEUE_WAIT_BUCKETS,
        )
        yield _histogram(
            "trainboard_job_run_duration_seconds", "From the first start to the end, for ended jobs",
            ((as_utc(row.finished_at) - as_utc(row.started_at)).total_seconds() for row in times if row.finished_at),
            RUN_DURATION_BUCKETS,
        )

        now = utcnow()
        workers = reads.live_workers(self.engine, self.lease_seconds, now)
        yield GaugeMetricFamily("trainboard_workers_alive", "Workers heartbeating within a lease", value=len(workers))
        unhealthy = GaugeMetricFamily(
            "trainboard_worker_slots_unhealthy", "Slots not claiming jobs for a host fault (scratch, store), per worker",
            labels=["worker"],
        )
        for worker in workers:
            unhealthy.add_metric([worker.id], sum(1 for slot in worker.slots if slot.get("problem")))
        yield unhealthy

        utilization = GaugeMetricFamily(
            "trainboard_gpu_utilization_ratio", "GPU busy fraction per worker slot (NVML)", labels=["worker", "slot", "gpu"]
        )
        memory_used = GaugeMetricFamily(
            "trainboard_gpu_memory_used_bytes", "GPU memory in use per worker slot (NVML)", labels=["worker", "slot", "gpu"]
        )
        memory_total = GaugeMetricFamily(
            "trainboard_gpu_memory_total_bytes", "GPU memory per worker slot (NVML)", labels=["worker", "slot", "gpu"]
        )
        for worker in workers:
            for slot in worker.slots:
                gpu = slot.get("gpu")
                if not gpu:
                    continue
                labels = [worker.id, str(slot.get("index")), slot.get("gpu_name") or slot.get("device", "")]
                utilization.add_metric(labels, gpu["utilization"])
                memory_used.add_metric(labels, gpu["memory_used"])
                memory_total.add_metric(labels, gpu["memory_total"])
        yield from (utilization, memory_used, memory_total)


@router.get("/metrics", tags=["health"], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by status, queue wait and run time, outcomes, workers, GPUs."""
    settings = request.app.state.settings
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(get_engine(settings.database_url), settings.lease_seconds))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
