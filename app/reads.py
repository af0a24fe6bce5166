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

from sqlalchemy import BigInteger, Engine, Select, func, literal, or_, select, true, tuple_, union
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import charts, queue
from app.db import is_sqlite, session_scope
from app.models import Job, JobMetric, JobStatus, MetricPoint, Worker, WorkerPublic, as_utc
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
# A job's metrics: its history, page by page, and the points its charts draw
# ---------------------------------------------------------------------------------------------

METRIC_KINDS = ("epoch", "train")


def job_metrics(
    engine: Engine,
    job_id: int,
    kind: str | None = None,
    *,
    attempt: int | None = None,
    after_step: int | None = None,
    limit: int | None = None,
    max_points: int | None = None,
) -> list[MetricPoint]:
    """A job's points in (attempt, kind, step) order: one attempt's or every attempt's, one kind or
    both, only those after `after_step`, at most `limit`. With max_points, each kind keeps at most
    that many, evenly spread over its steps and found by index seeks, so the cost grows with
    max_points and not with the points stored."""
    conditions = [JobMetric.job_id == job_id]
    if attempt is not None:
        conditions.append(JobMetric.attempt == attempt)
    if after_step is not None:
        conditions.append(JobMetric.step > after_step)
    kinds = [kind] if kind else list(METRIC_KINDS)
    # Columns, not ORM objects: building an ORM object costs more than reading its row.
    query = (
        select(JobMetric.attempt, JobMetric.kind, JobMetric.step, JobMetric.values)
        .order_by(JobMetric.attempt, JobMetric.kind, JobMetric.step)
        .limit(limit)
    )
    with session_scope(engine) as session:
        if max_points is None:
            # Both kinds: no condition on kind, so PostgreSQL walks the index in order too.
            query = query.where(*conditions, *([JobMetric.kind == kind] if kind else []))
        else:
            spread = [
                ids for each_kind in kinds
                if (ids := _evenly_spread(session, [*conditions, JobMetric.kind == each_kind], max_points)) is not None
            ]
            if not spread:
                return []
            query = query.where(col(JobMetric.id).in_(union(*spread)))
        rows = session.execute(query)
        return [MetricPoint(attempt=attempt, kind=kind, step=step, values=values) for attempt, kind, step, values in rows]


def _step_bound(conditions: list, last: bool = False) -> Any:
    """The first (or last) step of the matching points: ORDER BY and LIMIT rather than min() or
    max(), so that it is one index seek whatever the planner's statistics say."""
    order = JobMetric.step.desc() if last else JobMetric.step
    return select(JobMetric.step).where(*conditions).order_by(order).limit(1).scalar_subquery()


def _evenly_spread(session: Session, conditions: list, count: int) -> Select | None:
    """A query for the ids of at most `count` points among those matching (None when none do):
    the first at or after each of `count` steps spaced evenly from the first step to the last."""
    low, high = session.execute(select(_step_bound(conditions), _step_bound(conditions, last=True))).one()
    if low is None:
        return None
    targets = select(literal(0, BigInteger).label("position")).cte(recursive=True)
    targets = targets.union_all(select(targets.c.position + 1).where(targets.c.position + 1 < count))
    target_step = low + targets.c.position * (high - low) // max(count - 1, 1)
    first_at = select(JobMetric.id).where(*conditions, JobMetric.step >= target_step).order_by(JobMetric.step).limit(1)
    if is_sqlite(session.get_bind()):
        return select(first_at.scalar_subquery()).select_from(targets)
    # PostgreSQL would seek twice for a subquery in a select list; a LATERAL join seeks once.
    nearest = first_at.lateral()
    return select(nearest.c.id).select_from(targets).join(nearest, true())


def metric_points(engine: Engine, jobs: Iterable[Job]) -> dict[int, dict[str, list[tuple]]]:
    """Each job's current attempt: {"epoch": [(epoch, values)], "train": [(step, loss, count, last step)]}.

    Epochs come whole (a run has at most 1000). Train-loss points, one every log_interval
    batches, run to millions; they are averaged into at most charts.MAX_POINTS buckets by the
    database, and a refresh sums only the points that arrived since (see _LossSummary).
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
            points[job.id]["train"] = _train_loss_summary(session, job).points()
    return points


# A bucket of train-loss points: the sum and count of its finite losses, its first and last step.
Bucket = tuple[float, int, int, int]


def _merge(first: Bucket | None, second: Bucket) -> Bucket:
    if first is None:
        return second
    return first[0] + second[0], first[1] + second[1], min(first[2], second[2]), max(first[3], second[3])


@dataclass(frozen=True)
class _LossSummary:
    """One attempt's train loss as its chart draws it: buckets `width` steps wide from step `low`.

    The width is a power of two, so when the run outgrows charts.MAX_POINTS buckets, pairs of
    buckets merge exactly into buckets twice as wide; sums and counts (not means) make that, and
    adding the newest points to the last bucket, exact.
    """

    low: int
    width: int
    buckets: dict[int, Bucket]

    def widened(self, high: int) -> "_LossSummary":
        """Buckets wide enough to hold steps low to high in charts.MAX_POINTS."""
        width = self.width
        while (high - self.low) // width + 1 > charts.MAX_POINTS:
            width *= 2
        merged: dict[int, Bucket] = {}
        for index, bucket in sorted(self.buckets.items()):
            merged[index * self.width // width] = _merge(merged.get(index * self.width // width), bucket)
        return _LossSummary(self.low, width, merged)

    def points(self) -> list[tuple[int, float | None, int, int]]:
        return [
            (first, total / count if count else None, count, last)
            for total, count, first, last in (self.buckets[index] for index in sorted(self.buckets))
        ]


# Summaries by (database, job, attempt, worker): one attempt's history only grows, and a released
# attempt (its points deleted) is run again by another worker. A page polled every two seconds
# sums the points that arrived since its last look, plus the last bucket again.
_SUMMARIES_KEPT = 64
_summaries: OrderedDict[tuple, _LossSummary] = OrderedDict()
_summaries_lock = threading.Lock()


def _train_loss_summary(session: Session, job: Job) -> _LossSummary:
    key = (str(session.get_bind().url), job.id, job.attempts, job.worker_id)
    current = [JobMetric.job_id == job.id, JobMetric.attempt == job.attempts, JobMetric.kind == "train"]
    with _summaries_lock:
        summary = _summaries.get(key)
    if summary is None:
        low = session.scalar(select(_step_bound(current)))
        if low is None:
            return _LossSummary(0, 1, {})
        summary = _LossSummary(low, 1, {})
    summary = summary.widened(session.scalar(select(_step_bound(current, last=True))))
    resume = max(summary.buckets, default=0)
    fresh = _sum_losses(session, current, summary, resume)
    summary = _LossSummary(summary.low, summary.width, {**summary.buckets, **fresh})
    summary = summary.widened(max((last for *_, last in fresh.values()), default=summary.low))
    with _summaries_lock:
        _summaries[key] = summary
        _summaries.move_to_end(key)
        while len(_summaries) > _SUMMARIES_KEPT:
            _summaries.popitem(last=False)
    return summary


def _sum_losses(session: Session, current: list, summary: _LossSummary, from_index: int) -> dict[int, Bucket]:
    """The buckets from `from_index` on, summed by the database from the points in them."""
    in_range = [*current, JobMetric.step >= summary.low + from_index * summary.width]
    index = (JobMetric.step - summary.low) // summary.width
    loss = JobMetric.values["train_loss"].as_float()
    buckets = select(index, func.sum(loss), func.count(loss), func.min(JobMetric.step), func.max(JobMetric.step))
    try:
        with session.begin_nested():
            rows = session.execute(buckets.where(*in_range).group_by(index)).all()
        return {row[0]: (row[1] or 0.0, row[2], row[3], row[4]) for row in rows}
    except DBAPIError:
        # A diverged run can hold NaN, which SQLite's JSON functions refuse as malformed: sum
        # those points here instead, leaving out what is not a finite number, as the chart does.
        summed: dict[int, Bucket] = {}
        points = session.execute(select(JobMetric.step, JobMetric.values).where(*in_range).execution_options(yield_per=1000))
        for step, values in points:
            loss_value = values.get("train_loss")
            finite = isinstance(loss_value, int | float) and math.isfinite(loss_value)
            position = (step - summary.low) // summary.width
            summed[position] = _merge(summed.get(position), (loss_value, 1, step, step) if finite else (0.0, 0, step, step))
        return summed


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
