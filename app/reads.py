"""Every read the JSON API and the pages share: the job list with its status counts, search,
filters and sort orders, where queued jobs stand in the queue and why they wait, the training
speeds the form estimates run times from, a job's metric history and its chart points, its
example predictions, the workers; and the offline W&B runs `trainboard sync` uploads.

Writes and the queue protocol (claim, lease, fencing) live in app/queue.py; the SQL that differs
between SQLite and PostgreSQL lives in these two modules only.
"""

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import BigInteger, Engine, Select, func, literal, or_, select, true, tuple_, union
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import charts, queue, recipes
from app.db import is_sqlite, session_scope
from app.models import (
    FINISHED_STATUSES, TUTORIAL_RECIPE, Job, JobExample, JobLog, JobMetric, JobPublic, JobStatus, MetricPoint, RecipePublic,
    WaitingReason, Worker, WorkerPublic, as_utc, utcnow,
)
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


# How a list can be ordered: by a column or a final metric, "-" first for descending.
JobSort = Literal["created", "-created", "finished", "-finished", "test_accuracy", "-test_accuracy", "test_loss", "-test_loss"]
_SORT_KEYS = {
    "created": col(Job.id),  # ids grow with creation, and are unique
    "finished": col(Job.finished_at),
    "test_accuracy": Job.metrics["test_accuracy"].as_float(),
    "test_loss": Job.metrics["test_loss"].as_float(),
}


def _search_condition(search: str):
    """Name, tag or notes contain the text, case-insensitively. Tags are matched in the JSON text
    of params.tags, which both SQLite and PostgreSQL can extract without a table of their own."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(
        col(Job.name).ilike(pattern, escape="\\"),
        Job.params["tags"].as_string().ilike(pattern, escape="\\"),
        col(Job.notes).ilike(pattern, escape="\\"),
    )


def _tag_condition(engine: Engine, tag: str):
    """One of params.tags is exactly `tag`."""
    if is_sqlite(engine):
        tags = func.json_each(Job.params, "$.tags").table_valued("value")
    else:
        tags = func.json_array_elements_text(Job.params["tags"]).table_valued("value")
    return select(tags.c.value).where(tags.c.value == tag).exists()


def _as_utc(moment: datetime) -> datetime:
    """Times are stored in UTC (SQLite keeps no offset): a naive bound is taken as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def list_jobs(
    engine: Engine, *, status: JobStatus | None, limit: int, offset: int, search: str | None = None,
    owner: str | None = None,
    tag: str | None = None, created_after: datetime | None = None, created_before: datetime | None = None,
    sort: JobSort = "-created", sweep_id: int | None = None,
) -> JobListing:
    """A page of jobs in `sort` order (jobs without the metric or time sorted on come last, either
    way), created in [created_after, created_before)."""
    conditions = [_search_condition(search)] if search else []
    if owner:
        conditions.append(Job.owner == owner)
    if sweep_id is not None:
        conditions.append(Job.sweep_id == sweep_id)
    if tag:
        conditions.append(_tag_condition(engine, tag))
    if created_after:
        conditions.append(col(Job.created_at) >= _as_utc(created_after))
    if created_before:
        conditions.append(col(Job.created_at) < _as_utc(created_before))
    query = select(Job).where(*conditions)
    if status:
        query = query.where(Job.status == status)
    key = _SORT_KEYS[sort.removeprefix("-")]
    order = (key.desc() if sort.startswith("-") else key.asc()).nulls_last()
    counts_query = select(Job.status, func.count()).where(*conditions).group_by(Job.status)
    with session_scope(engine) as session:
        jobs = list(session.scalars(query.order_by(order, col(Job.id).desc()).limit(limit).offset(offset)))
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
# The queue: where queued jobs stand, and why they wait
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """The live workers' slots, how many of them no running job holds, and the recipes they have."""

    slots: int
    free: int
    recipes: frozenset[str] = frozenset()

    def waiting_reason(self, position: int, recipe: str = TUTORIAL_RECIPE) -> WaitingReason | None:
        """Why the job at this queue position waits, or None when a free slot will take it next."""
        if self.slots == 0:
            return WaitingReason(code="no_worker", message="no worker is alive; start one with `trainboard worker`")
        if recipe not in self.recipes:
            return WaitingReason(code="no_recipe", message=(
                f"no live worker has the recipe {recipe}; install it on a worker host and restart that worker "
                "(/workers lists each worker's recipes)"
            ))
        if position <= self.free:
            return None
        slots = "the only worker slot is busy" if self.slots == 1 else f"all {self.slots} worker slots are busy"
        return WaitingReason(code="all_busy", message=f"{slots}; position {position} in the queue")


def capacity(engine: Engine, lease_seconds: float, now: datetime) -> Capacity:
    """Slots of workers alive now; a slot is busy while a running job claimed by its worker holds it."""
    live = live_workers(engine, lease_seconds, now)
    if not live:
        return Capacity(0, 0)
    running = (
        select(Job.worker_id, func.count())
        .where(Job.status == JobStatus.RUNNING, col(Job.worker_id).in_([worker.id for worker in live]))
        .group_by(Job.worker_id)
    )
    with session_scope(engine) as session:
        busy = dict(session.execute(running).all())
    slots = sum(len(worker.slots) for worker in live)
    return Capacity(
        slots, sum(max(0, len(worker.slots) - busy.get(worker.id, 0)) for worker in live),
        frozenset(name for worker in live for name in worker_recipes(worker)),
    )


def queue_positions(engine: Engine, job_ids: Iterable[int]) -> dict[int, int]:
    """{job id: its 1-based place among queued jobs, in the order workers claim them} for those queued."""
    job_ids = list(job_ids)
    if not job_ids:
        return {}
    ranked = select(
        Job.id, func.row_number().over(order_by=col(Job.id)).label("position")
    ).where(Job.status == JobStatus.QUEUED).subquery()
    with session_scope(engine) as session:
        rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(job_ids)))
        return dict(rows.all())


def job_views(engine: Engine, jobs: Iterable[Job], lease_seconds: float) -> list[JobPublic]:
    """Jobs as the API shows them: queued ones with their queue position and why they wait."""
    jobs = list(jobs)
    positions = queue_positions(engine, [job.id for job in jobs if job.status == JobStatus.QUEUED])
    room = capacity(engine, lease_seconds, utcnow()) if positions else None
    return [
        JobPublic.from_job(job, positions[job.id], room.waiting_reason(positions[job.id], job.recipe))
        if job.id in positions else JobPublic.from_job(job)
        for job in jobs
    ]


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


def read_log(engine: Engine, settings: Settings, job_id: int, offset: int | None, max_bytes: int) -> tuple[str, int]:
    """Up to max_bytes of the job's training output, every attempt's in order: from `offset` on,
    or its last max_bytes when offset is None; and the offset the text ends at. From the database,
    so any host's app shows it; where the database kept only an attempt's last bytes, a line says
    how many were dropped. Jobs from before logs were kept in the database read their log file."""
    query = select(JobLog.attempt, JobLog.offset, JobLog.text).where(JobLog.job_id == job_id)
    with session_scope(engine) as session:
        chunks = session.execute(query.order_by(JobLog.attempt, JobLog.offset)).all()
    if not chunks:
        return settings.job_files(job_id).read_log(offset, max_bytes)
    parts, previous = [], None
    for attempt, chunk_offset, text in chunks:
        if attempt != previous and chunk_offset > 0:
            parts.append(f"[trainboard: the first {chunk_offset:,} bytes of attempt {attempt}'s output were dropped; "
                         f"the last {settings.log_max_bytes:,} bytes of each attempt are kept]\n")
        previous = attempt
        parts.append(text)
    log = "".join(parts).encode()
    start = max(0, len(log) - max_bytes) if offset is None else min(offset, len(log))
    data = log[start:start + max_bytes]
    return data.decode("utf-8", errors="replace"), start + len(data)


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
            recipes=worker_recipes(worker),
            recipe_errors=worker.recipe_errors or {},
        )
        for worker in list_workers(engine)
    ]


def live_workers(engine: Engine, lease_seconds: float, now: datetime) -> list[Worker]:
    return [worker for worker in list_workers(engine) if queue.worker_alive(worker, lease_seconds, now)]


def worker_recipes(worker: Worker) -> dict[str, str]:
    """The recipes a worker can run; one registered before recipes existed runs the tutorial's."""
    return worker.recipes if worker.recipes is not None else {recipes.TUTORIAL.name: recipes.TUTORIAL.version}


def recipe_views(engine: Engine, lease_seconds: float, now: datetime) -> list[RecipePublic]:
    """The recipes this process knows, each with the live workers that can run it."""
    live = live_workers(engine, lease_seconds, now)
    return [
        RecipePublic(
            **recipe.summary(), schema=recipe.json_schema(),
            workers=[worker.id for worker in live if name in worker_recipes(worker)],
        )
        for name, recipe in recipes.registry().recipes.items()
    ]
