"""Every read the JSON API and the pages share: the job list with its status counts and search,
a job's metric history and its chart points, its example predictions, and the workers.

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
from app.models import Job, JobExample, JobLog, JobMetric, JobStatus, Worker, WorkerPublic, as_utc
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
# A job's files
# ---------------------------------------------------------------------------------------------


def read_log(engine: Engine, settings: Settings, job_id: int, max_bytes: int) -> str:
    """The last max_bytes of the job's training output, every attempt's in order, from the
    database (so any host's app can show it); where the database kept only an attempt's last
    bytes, a line says how many were dropped. Jobs from before logs were kept in the database
    read their log file in the local store."""
    query = select(JobLog.attempt, JobLog.offset, JobLog.text).where(JobLog.job_id == job_id)
    with session_scope(engine) as session:
        # Newest chunks first, only as many as the tail needs.
        chunks, size = [], 0
        for attempt, offset, text in session.execute(query.order_by(col(JobLog.attempt).desc(), col(JobLog.offset).desc())):
            chunks.append((attempt, offset, text))
            size += len(text)
            if size >= max_bytes:
                break
        first_kept = dict(session.execute(
            select(JobLog.attempt, func.min(JobLog.offset)).where(JobLog.job_id == job_id).group_by(JobLog.attempt)
        ).all())
    if not chunks:
        return settings.job_files(job_id).log_tail(max_bytes)
    parts, previous = [], None
    for attempt, offset, text in reversed(chunks):
        if attempt != previous and offset == first_kept.get(attempt) and offset > 0:
            parts.append(f"[trainboard: the first {offset:,} bytes of attempt {attempt}'s output were dropped; "
                         f"{settings.log_max_bytes:,} bytes are kept per attempt]\n")
        previous = attempt
        parts.append(text)
    log = "".join(parts)
    return log[-max_bytes:]


def read_examples(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any] | None:
    """The last evaluated epoch's "Examples": {"epoch", "examples": [{"file", "caption"}]}, or None.
    From the database; jobs from before examples were kept there read the local store's folder."""
    query = select(JobExample.position, JobExample.epoch, JobExample.caption).where(JobExample.job_id == job_id)
    with session_scope(engine) as session:
        rows = session.execute(query.order_by(JobExample.position)).all()
    if rows:
        return {"epoch": rows[0].epoch, "examples": [{"file": f"{row.position:02d}.png", "caption": row.caption} for row in rows]}
    try:
        manifest = json.loads(settings.job_files(job_id).examples_manifest.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return manifest if manifest.get("examples") else None


def missing_artifact_reason(settings: Settings, job_id: int, artifact: dict[str, Any]) -> str:
    """Why a listed artifact is not in this app's store: most often, a worker on another host
    wrote it to that host's own local store."""
    store = settings.store
    written_to, host = artifact.get("store"), artifact.get("host")
    fix = "configure TRAINBOARD_ARTIFACTS_URL to one store shared by the app and every worker"
    if written_to and "://" not in written_to and host and host != settings.host_name:
        return f"artifact {artifact['name']!r} of job {job_id} is stored on host {host}'s local disk ({written_to}); {fix}"
    if written_to and written_to != store.public_url:
        return f"artifact {artifact['name']!r} of job {job_id} is in the store {written_to}, not in this app's {store.public_url}; {fix}"
    return f"artifact {artifact['name']!r} of job {job_id} is missing from the store {store.public_url}"


def read_example_png(engine: Engine, settings: Settings, job_id: int, name: str) -> bytes | None:
    """One example's PNG by the file name read_examples gives it, or None."""
    manifest = read_examples(engine, settings, job_id)
    if manifest is None or name not in {example["file"] for example in manifest["examples"]}:
        return None
    position = int(name.removesuffix(".png")) if name.removesuffix(".png").isdigit() else -1
    with session_scope(engine) as session:
        png = session.scalar(select(JobExample.png).where((JobExample.job_id == job_id) & (JobExample.position == position)))
    if png is not None:
        return bytes(png)
    try:
        return (settings.job_files(job_id).examples_dir / name).read_bytes()
    except FileNotFoundError:
        return None


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
            store=worker.store,
            slots=worker.slots,
            started_at=as_utc(worker.started_at),
            heartbeat_at=as_utc(worker.heartbeat_at),
            stopped_at=as_utc(worker.stopped_at),
            alive=queue.worker_alive(worker, lease_seconds, now),
        )
        for worker in list_workers(engine)
    ]
