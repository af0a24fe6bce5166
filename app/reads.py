"""Every read the JSON API and the pages share: the job list with its status counts and search,
the training speeds the form estimates run times from, a job's metric history and its chart
points, its example predictions, the workers; and the offline W&B runs `trainboard sync` uploads.

Writes and the queue protocol (claim, lease, fencing) live in app/queue.py; the SQL that differs
between SQLite and PostgreSQL lives in these two modules only.
"""

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import charts, queue
from app.db import session_scope
from app.models import FINISHED_STATUSES, Job, JobMetric, JobStatus, Worker, WorkerPublic, as_utc
from app.settings import Settings

# ---------------------------------------------------------------------------------------------
# The job list
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobListing:
    """A page of jobs, newest first, and how many jobs each status has under the same search."""

    jobs: list[Job]
    counts: dict[str, int]
    status: JobStatus | None

    @property
    def total(self) -> int:
        """How many jobs match the whole query (status and search), across all pages."""
        return self.counts.get(self.status, 0) if self.status else sum(self.counts.values())


def _search_condition(search: str):
    """Name or tag contains the text, case-insensitively. Tags are matched in the JSON text of
    params.tags, which both SQLite and PostgreSQL can extract without a table of their own."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(
        col(Job.name).ilike(pattern, escape="\\"),
        Job.params["tags"].as_string().ilike(pattern, escape="\\"),
    )


def list_jobs(
    engine: Engine, *, status: JobStatus | None, limit: int, offset: int, search: str | None = None
) -> JobListing:
    conditions = [_search_condition(search)] if search else []
    query = select(Job).where(*conditions)
    if status:
        query = query.where(Job.status == status)
    counts_query = select(Job.status, func.count()).where(*conditions).group_by(Job.status)
    with session_scope(engine) as session:
        jobs = list(session.scalars(query.order_by(col(Job.id).desc()).limit(limit).offset(offset)))
        counts = {row[0]: row[1] for row in session.execute(counts_query)}
    return JobListing(jobs, counts, status)


def device_kind(params: dict[str, Any], slots: list[dict[str, Any]] | None) -> str | None:
    """Where a job trained, "gpu" or "cpu": on its worker's GPU when it asked for one and the worker
    had GPUs (a worker's slots are all GPUs or one CPU slot); None when its worker is unknown."""
    if not params.get("use_cuda"):
        return "cpu"
    if slots is None:
        return None
    return "gpu" if any(slot.get("device", "").startswith("cuda") for slot in slots) else "cpu"


def training_speeds(engine: Engine, recent: int = 200) -> dict[str, dict[str, Any]]:
    """{"model/dataset/device kind": {"images_per_second", "job_id"}} from the last succeeded job
    of each kind among the `recent` latest, for the form's estimate of a new job's run time."""
    query = (
        select(Job.id, Job.params, Job.metrics, Worker.slots)
        .outerjoin(Worker, Worker.id == Job.worker_id)
        .where(Job.status == JobStatus.SUCCEEDED)
        .order_by(col(Job.id).desc())
        .limit(recent)
    )
    speeds: dict[str, dict[str, Any]] = {}
    with session_scope(engine) as session:
        rows = session.execute(query).all()
    for job_id, params, metrics, slots in rows:
        kind = device_kind(params, slots)
        speed = metrics.get("train_images_per_second")
        if kind is None or not isinstance(speed, int | float) or not speed > 0:
            continue
        speeds.setdefault(f"{params.get('model')}/{params.get('dataset')}/{kind}", {"images_per_second": speed, "job_id": job_id})
    return speeds


# ---------------------------------------------------------------------------------------------
# A job's metrics: the whole history, and the points its charts draw
# ---------------------------------------------------------------------------------------------


def job_metrics(engine: Engine, job_id: int, kind: str | None = None) -> list[JobMetric]:
    query = select(JobMetric).where(JobMetric.job_id == job_id)
    if kind:
        query = query.where(JobMetric.kind == kind)
    with session_scope(engine) as session:
        return list(session.scalars(query.order_by(col(JobMetric.id))))


def metric_points(engine: Engine, jobs: Iterable[Job]) -> dict[int, dict[str, list[tuple]]]:
    """Each job's current attempt: {"epoch": [(epoch, values)], "train": [(step, loss, count, last step)]}.

    Epochs come whole (a run has at most 1000). Train-loss points, one every log_interval
    batches, run to tens of thousands; the database averages them into at most
    charts.MAX_POINTS buckets, so a page never decodes them all.
    """
    jobs = list(jobs)
    points: dict[int, dict[str, list[tuple]]] = {job.id: {"epoch": [], "train": []} for job in jobs}
    if not jobs:
        return points
    epochs = (
        select(JobMetric.job_id, JobMetric.step, JobMetric.values)
        .where(tuple_(JobMetric.job_id, JobMetric.attempt).in_([(job.id, job.attempts) for job in jobs]))
        .where(JobMetric.kind == "epoch")
        .order_by(JobMetric.job_id, JobMetric.step)
    )
    with session_scope(engine) as session:
        for job_id, step, values in session.execute(epochs):
            points[job_id]["epoch"].append((step, values))
        for job in jobs:
            points[job.id]["train"] = _train_loss_buckets(session, job)
    return points


# The worker writes a job's progress in the same transaction as its metric points, so a job's
# (database, id, attempt, status, progress) names one state of its train-loss history: a page polled
# every two seconds, or a finished job viewed again, reuses the buckets instead of averaging
# tens of thousands of rows once more.
_TRAIN_CACHE_SIZE = 64
_train_cache: OrderedDict[tuple, list[tuple[int, float | None, int, int]]] = OrderedDict()
_train_cache_lock = threading.Lock()


def _train_loss_buckets(session: Session, job: Job) -> list[tuple[int, float | None, int, int]]:
    key = (str(session.get_bind().url), job.id, job.attempts, job.status, json.dumps(job.progress, sort_keys=True))
    with _train_cache_lock:
        if key in _train_cache:
            _train_cache.move_to_end(key)
            return _train_cache[key]
    buckets = _average_train_loss(session, job)
    with _train_cache_lock:
        _train_cache[key] = buckets
        while len(_train_cache) > _TRAIN_CACHE_SIZE:
            _train_cache.popitem(last=False)
    return buckets


def _average_train_loss(session: Session, job: Job) -> list[tuple[int, float | None, int, int]]:
    current = (JobMetric.job_id == job.id) & (JobMetric.attempt == job.attempts) & (JobMetric.kind == "train")
    low, high = session.execute(select(func.min(JobMetric.step), func.max(JobMetric.step)).where(current)).one()
    if low is None:
        return []
    width = max(1, math.ceil((high - low + 1) / charts.MAX_POINTS))
    loss = JobMetric.values["train_loss"].as_float()
    buckets = (
        select(func.min(JobMetric.step), func.avg(loss), func.count(), func.max(JobMetric.step))
        .where(current)
        .group_by((JobMetric.step - low) // width)
        .order_by(func.min(JobMetric.step))
    )
    try:
        with session.begin_nested():
            return [tuple(row) for row in session.execute(buckets)]
    except DBAPIError:
        # A diverged run can hold NaN, which SQLite's JSON functions refuse as malformed:
        # decode that job's points here instead (the chart leaves non-finite values out).
        rows = session.execute(select(JobMetric.step, JobMetric.values).where(current).order_by(JobMetric.step))
        return [(step, values.get("train_loss"), 1, step) for step, values in rows]


# ---------------------------------------------------------------------------------------------
# Offline W&B runs, for `trainboard sync`
# ---------------------------------------------------------------------------------------------


def offline_runs(engine: Engine, job_id: int | None = None) -> list[Job]:
    """Finished jobs whose W&B run was logged offline and not uploaded since, oldest first (or the
    one job with this id, if it is such a job). A running job's run is still being written."""
    query = select(Job).where(
        col(Job.status).in_(FINISHED_STATUSES), Job.wandb_mode == "offline", col(Job.wandb_dir).is_not(None)
    )
    if job_id is not None:
        query = query.where(Job.id == job_id)
    with session_scope(engine) as session:
        return list(session.scalars(query.order_by(col(Job.id))))


# ---------------------------------------------------------------------------------------------
# A job's files
# ---------------------------------------------------------------------------------------------


def read_examples(settings: Settings, job_id: int) -> dict[str, Any] | None:
    """The last evaluated epoch's "Examples": {"epoch", "examples": [{"file", "caption"}]}, or None."""
    try:
        manifest = json.loads(settings.job_files(job_id).examples_manifest.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return manifest if manifest.get("examples") else None


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def list_workers(engine: Engine, limit: int = 200) -> list[Worker]:
    """Registered workers, most recent heartbeat first."""
    with session_scope(engine) as session:
        return list(session.scalars(select(Worker).order_by(col(Worker.heartbeat_at).desc()).limit(limit)))


def worker_views(engine: Engine, lease_seconds: float, now: datetime) -> list[WorkerPublic]:
    """The workers as the API and the workers page show them, each alive or not by its heartbeat."""
    return [
        WorkerPublic(
            id=worker.id,
            host=worker.host,
            pid=worker.pid,
            slots=worker.slots,
            started_at=as_utc(worker.started_at),
            heartbeat_at=as_utc(worker.heartbeat_at),
            stopped_at=as_utc(worker.stopped_at),
            alive=queue.worker_alive(worker, lease_seconds, now),
        )
        for worker in list_workers(engine)
    ]
