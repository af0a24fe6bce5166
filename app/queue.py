"""The queue protocol: submit, claim, lease renewal, fenced writes, cancel, and the reaper.

Its SQL and app/reads.py's (the reads the API and the pages share) are the only SQL that differs
between SQLite and PostgreSQL. Every write a worker
makes about a job is fenced on (id, worker_id, attempt, status='running'): zero rows updated
means the job is no longer that worker's, and the caller must stop and write nothing more.
"""

import logging
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Iterable, Literal

import psycopg
from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Engine, Float, Integer, String, bindparam, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import recipes
from app.db import is_sqlite, session_scope
from app.models import (
    ADMIN_NAME, FINISHED_STATUSES, DeletedJob, Job, JobExample, JobLog, JobMetric, JobStatus, JobUpdate, Sweep, Worker,
    as_utc, utcnow,
)
from app.recipes import TUTORIAL, Recipe
from app.settings import Settings
from app.store import StoreError

log = logging.getLogger("trainboard.queue")

NOTIFY_CHANNEL = "trainboard_jobs"
# PostgreSQL advisory lock that capped submits take in turn (app/db.py's migration lock is another).
SUBMIT_LOCK_KEY = 7240522


class JobNotFound(LookupError):
    def __init__(self, job_id: int):
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class QueueFull(RuntimeError):
    def __init__(self, limit: int):
        super().__init__(f"{limit} jobs are already queued (TRAINBOARD_MAX_QUEUED); submit again when some have started")
        self.limit = limit


class JobStateConflict(RuntimeError):
    def __init__(self, job_id: int, status: str, action: str, why: str | None = None):
        super().__init__(why or f"job {job_id} is {status}; cannot {action} it")
        self.job_id = job_id
        self.status = status


# A worker's hold on one attempt of one job: the fence every later write carries.
@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    worker_id: str
    name: str
    params: dict[str, Any]
    # The job's last checkpoint in the store, which this attempt resumes from (None: from scratch).
    checkpoint: dict[str, Any] | None = None
    # A sweep's trial: its sweep, and the W&B group its run joins (the sweep's name).
    sweep_id: int | None = None
    wandb_group: str | None = None
    # The recipe it trains (app/recipes.py).
    recipe: str = TUTORIAL.name


RenewOutcome = Literal["ok", "cancel", "pause", "lost"]


# ---------------------------------------------------------------------------------------------
# Submitting and reading
# ---------------------------------------------------------------------------------------------


def submit(
    engine: Engine, params: BaseModel, *, default_wandb_mode: str, max_attempts: int,
    max_queued: int | None = None, retry_of: int | None = None, owner: str = ADMIN_NAME, recipe: Recipe = TUTORIAL,
) -> Job:
    """Queue a job for `owner`. With max_queued, refuse (QueueFull) while that many jobs wait already."""
    with write_session(engine) as session:
        if max_queued is not None:
            _serialise_submits(session)
            waiting = session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)) or 0
            if waiting >= max_queued:
                raise QueueFull(max_queued)
        job = add_job(
            session, params, default_wandb_mode=default_wandb_mode, max_attempts=max_attempts, owner=owner,
            retry_of=retry_of, recipe=recipe,
        )
        session.commit()
        session.refresh(job)
    log.info("job %d queued", job.id, extra={"job_id": job.id})
    return job


def add_job(
    session: Session, params: BaseModel, *, default_wandb_mode: str, max_attempts: int, owner: str,
    recipe: Recipe = TUTORIAL, **columns: Any,
) -> Job:
    """A new job row in the caller's transaction (submit's, or a sweep's for its trials), and the
    wake-up for workers when it commits. `params` are the recipe's job model's. `columns` sets
    others (retry_of, a trial's, a status)."""
    values = params.model_dump(mode="json")
    values["wandb_mode"] = values["wandb_mode"] or default_wandb_mode
    job = Job(
        id=_next_sqlite_id(session), name=values["name"] or "", owner=owner, params=values, max_attempts=max_attempts,
        recipe=recipe.name, recipe_version=recipe.version, **columns,
    )
    session.add(job)
    session.flush()
    if not job.name:
        job.name = f"job-{job.id}"
        job.params = {**values, "name": job.name}
    notify(session)
    return job


def _next_sqlite_id(session: Session) -> int | None:
    """SQLite numbers a new row max(id) + 1, which would hand a deleted newest job's id (its links,
    its W&B run name) to the next job: ids count on past the deleted ones. PostgreSQL's sequence
    never gives an id out twice (None: the database numbers the row)."""
    if not is_sqlite(session.get_bind()):
        return None
    highest = [session.scalar(select(func.max(table.id))) or 0 for table in (Job, DeletedJob)]
    return max(highest) + 1


def get_job(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


# ---------------------------------------------------------------------------------------------
# Claiming and the lease
# ---------------------------------------------------------------------------------------------

# A new attempt starts clean: progress and metrics are those of the attempt that runs.
_CLAIM_SET = """
    status = 'running', worker_id = :worker_id, attempts = attempts + 1,
    lease_expires_at = {lease}, started_at = COALESCE(started_at, {now}),
    cancel_requested = false, pause_requested = false, error = NULL, progress = :empty, metrics = :empty,
    host = :host
"""
# Typed, so both drivers store the datetimes as SQLAlchemy's columns do (SQLite compares them as text).
_CLAIM_PARAMS_SQLITE = (
    bindparam("lease", type_=DateTime(timezone=True)),
    bindparam("now", type_=DateTime(timezone=True)),
    bindparam("empty", type_=JSON),
)
_CLAIMED = {
    "id": Integer, "attempts": Integer, "name": String, "params": JSON, "checkpoint": JSON, "sweep_id": Integer, "trial": JSON,
    "recipe": String,
}
_CLAIM_PARAMS_POSTGRES = (bindparam("lease_seconds", type_=Float), bindparam("empty", type_=JSON))

_CLAIM_POSTGRES = f"""
    WITH next_job AS (
        SELECT id FROM jobs WHERE status = 'queued'{{recipes}} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET {_CLAIM_SET.format(lease="now() + make_interval(secs => :lease_seconds)", now="now()")}
    FROM next_job WHERE jobs.id = next_job.id
    RETURNING jobs.id, jobs.attempts, jobs.name, jobs.params, jobs.checkpoint, jobs.sweep_id, jobs.trial, jobs.recipe
"""

_CLAIM_SQLITE = f"""
    UPDATE jobs SET {_CLAIM_SET.format(lease=":lease", now=":now")}
    WHERE id = (SELECT id FROM jobs WHERE status = 'queued'{{recipes}} ORDER BY id LIMIT 1)
    RETURNING id, attempts, name, params, checkpoint, sweep_id, trial, recipe
"""


@lru_cache(maxsize=4)
def _claim_statement(postgres: bool, by_recipe: bool):
    """The claim, for any recipe or only those in :recipes (the ones the worker has)."""
    sql = (_CLAIM_POSTGRES if postgres else _CLAIM_SQLITE).format(recipes=" AND recipe IN :recipes" if by_recipe else "")
    params = _CLAIM_PARAMS_POSTGRES if postgres else _CLAIM_PARAMS_SQLITE
    if by_recipe:
        params = (*params, bindparam("recipes", expanding=True))
    return text(sql).bindparams(*params).columns(**_CLAIMED)


def claim(
    engine: Engine, worker_id: str, lease_seconds: float, host: str | None = None, recipes: Iterable[str] | None = None,
) -> Claim | None:
    """Take the oldest queued job for this worker, atomically, or None when the queue is empty.
    With `recipes`, only a job of one of those (the worker's)."""
    extra = {"recipes": sorted(recipes)} if recipes is not None else {}
    statement = _claim_statement(not is_sqlite(engine), recipes is not None)
    if is_sqlite(engine):
        now = utcnow()
        values = {
            "worker_id": worker_id, "lease": now + timedelta(seconds=lease_seconds), "now": now, "empty": {}, "host": host,
        }
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as connection:
            row = connection.execute(statement, {**values, **extra}).first()
            connection.commit()
    else:
        values = {"worker_id": worker_id, "lease_seconds": lease_seconds, "empty": {}, "host": host}
        with engine.connect() as connection:
            row = connection.execute(statement, {**values, **extra}).first()
            connection.commit()
    if row is None:
        return None
    return Claim(
        job_id=row.id, attempt=row.attempts, worker_id=worker_id, name=row.name, params=row.params, checkpoint=row.checkpoint,
        sweep_id=row.sweep_id, wandb_group=(row.trial or {}).get("group"), recipe=row.recipe,
    )


def _clock(engine: Engine):
    """Leases are stamped and judged by one clock: PostgreSQL's own, shared by every host (SQLite
    serves one host, whose clock it is)."""
    return utcnow() if is_sqlite(engine) else func.now()


def _seconds(engine: Engine, seconds: float):
    return timedelta(seconds=seconds) if is_sqlite(engine) else func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def fence(claim: Claim):
    return (
        (Job.id == claim.job_id)
        & (Job.worker_id == claim.worker_id)
        & (Job.attempts == claim.attempt)
        & (Job.status == JobStatus.RUNNING)
    )


def _fenced_update(session: Session, claim: Claim, **values: Any) -> bool:
    result = session.execute(update(Job).where(fence(claim)).values(**values))
    return result.rowcount == 1


def _owns(session: Session, claim: Claim) -> bool:
    """The fence for rows of a job's own tables: the job is still this attempt's."""
    return session.scalar(select(func.count()).select_from(Job).where(fence(claim))) == 1


def renew(engine: Engine, claim: Claim, lease_seconds: float) -> RenewOutcome:
    """Heartbeat: extend the lease. Says whether a cancel was asked for, or the job was lost."""
    with session_scope(engine) as session:
        row = session.execute(
            update(Job)
            .where(fence(claim))
            .values(lease_expires_at=_clock(engine) + _seconds(engine, lease_seconds))
            .returning(Job.cancel_requested, Job.pause_requested)
        ).first()
        session.commit()
    if row is None:
        return "lost"
    if row.cancel_requested:
        return "cancel"
    return "pause" if row.pause_requested else "ok"


# ---------------------------------------------------------------------------------------------
# Fenced writes from a worker
# ---------------------------------------------------------------------------------------------


def record_wandb(engine: Engine, claim: Claim, *, mode: str, url: str | None, run_id: str | None, run_dir: str | None, note: str | None, host: str | None = None) -> bool:
    """The attempt's W&B run; its folder joins the job's list of attempt folders (synced in order)."""
    with write_session(engine) as session:
        job = session.get(Job, claim.job_id)
        earlier = [entry for entry in (job.wandb_attempts if job else []) if entry.get("attempt") != claim.attempt]
        attempts = [*earlier, {"attempt": claim.attempt, "host": host, "dir": run_dir and run_dir[:1024], "mode": mode}]
        owned = _fenced_update(
            session, claim, wandb_mode=mode, wandb_url=url and url[:512], wandb_run_id=run_id and run_id[:128],
            wandb_dir=run_dir and run_dir[:1024], note=note and note[:1024], wandb_attempts=attempts[-100:],
        )
        session.commit()
    return owned


def record_run(engine: Engine, claim: Claim, *, host: str, device: str) -> bool:
    """Where this attempt trains (its worker, host and device) joins the job's list of runs."""
    with write_session(engine) as session:
        job = session.get(Job, claim.job_id)
        earlier = [run for run in (job.runs if job else []) if run.get("attempt") != claim.attempt]
        run = {"attempt": claim.attempt, "worker": claim.worker_id, "host": host, "device": device}
        owned = _fenced_update(session, claim, runs=[*earlier, run][-100:])
        session.commit()
    return owned


def record_progress(
    engine: Engine,
    claim: Claim,
    *,
    progress: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    points: list[tuple[str, int, dict[str, Any]]] = (),
    max_points: int | None = None,
) -> bool:
    """Store progress (and the latest metrics), plus metric points, only while the job is ours.
    With `max_points`, the attempt keeps at most that many points of each kind, thinned evenly
    over its steps (_thin_points); None keeps them all."""
    values: dict[str, Any] = {"progress": progress}
    if metrics is not None:
        values["metrics"] = metrics
    with session_scope(engine) as session:
        owned = _fenced_update(session, claim, **values)
        if owned:
            by_kind: dict[str, list[tuple[int, dict[str, Any]]]] = {}
            for kind, step, point in points:
                by_kind.setdefault(kind, []).append((step, point))
            for kind, kept in by_kind.items():
                if max_points is not None:
                    kept = _thin_points(session, claim, kind, kept, max_points)
                session.add_all(
                    JobMetric(job_id=claim.job_id, attempt=claim.attempt, kind=kind, step=step, values=point)
                    for step, point in kept
                )
        session.commit()
    return owned


# The steps a metric point may have (the column is a 32-bit integer on PostgreSQL).
MAX_STEP = 2**31 - 1


def _bucket_width(low: int, high: int, max_points: int) -> int:
    """The narrowest power of two such that steps low to high fall in at most max_points buckets
    of that width (bucket = step // width)."""
    width = 1
    while high // width - low // width + 1 > max_points:
        width *= 2
    return width


def _thin_points(
    session: Session, claim: Claim, kind: str, points: list[tuple[int, dict[str, Any]]], max_points: int,
) -> list[tuple[int, dict[str, Any]]]:
    """Of `points` (step, values) about to be stored, those to keep so that the attempt holds at
    most one point of `kind` per bucket of steps, the buckets as wide as max_points of them need
    to cover its steps. Until a run spans max_points steps every point is kept; past that the
    buckets widen by doubling, each merging two whose first point stays (every 2nd point, then
    every 4th...), so the whole run stays evenly covered and at most max_points are kept
    whatever steps the training reports. Steps outside 0..MAX_STEP, which no training
    reports, are dropped."""
    points = [(step, values) for step, values in points if 0 <= step <= MAX_STEP]
    if not points:
        return []
    this_kind = (JobMetric.job_id == claim.job_id) & (JobMetric.attempt == claim.attempt) & (JobMetric.kind == kind)
    # Two subqueries: SQLite reads a lone min() or max() off the index, not both at once.
    stored_low, stored_high = session.execute(select(
        select(func.min(JobMetric.step)).where(this_kind).scalar_subquery(),
        select(func.max(JobMetric.step)).where(this_kind).scalar_subquery(),
    )).one()
    steps = [step for step, _ in points]
    low = min(steps) if stored_low is None else min(stored_low, *steps)
    high = max(steps) if stored_high is None else max(stored_high, *steps)
    width = _bucket_width(low, high, max_points)
    taken: set[int] = set()
    if stored_low is not None:
        if width > _bucket_width(stored_low, stored_high, max_points):
            # Wider buckets: keep the first stored point of each.
            first_of_each = select(func.min(JobMetric.id)).where(this_kind).group_by(JobMetric.step // width)
            session.execute(delete(JobMetric).where(this_kind & col(JobMetric.id).not_in(first_of_each)))
        # The buckets the new points fall in that already hold a stored point: usually just the last one.
        first_bucket, last_bucket = min(steps) // width, min(max(steps), stored_high) // width
        if first_bucket <= last_bucket:
            occupied = select(JobMetric.step // width).where(
                this_kind, JobMetric.step >= first_bucket * width, JobMetric.step < (last_bucket + 1) * width
            ).distinct()
            taken.update(session.scalars(occupied))
    kept = []
    for step, values in points:
        if step // width not in taken:
            taken.add(step // width)
            kept.append((step, values))
    return kept


def append_log(engine: Engine, claim: Claim, offset: int, text: str, *, max_bytes: int) -> bool:
    """Append a chunk of the attempt's output (starting at byte `offset` of it), then drop the
    attempt's oldest chunks while more than max_bytes are kept."""
    with session_scope(engine) as session:
        owned = _owns(session, claim)
        if owned:
            session.add(JobLog(job_id=claim.job_id, attempt=claim.attempt, offset=offset, text=text))
            end = offset + len(text.encode())
            this_attempt = (JobLog.job_id == claim.job_id) & (JobLog.attempt == claim.attempt)
            session.execute(delete(JobLog).where(this_attempt & (JobLog.offset < end - max_bytes) & (JobLog.offset < offset)))
        session.commit()
    return owned


def record_examples(engine: Engine, claim: Claim, epoch: int, examples: list[tuple[str, bytes]]) -> bool:
    """The epoch's example predictions (caption, PNG) replace the previous epoch's."""
    with session_scope(engine) as session:
        owned = _owns(session, claim)
        if owned:
            session.execute(delete(JobExample).where(JobExample.job_id == claim.job_id))
            session.add_all(
                JobExample(job_id=claim.job_id, position=position, epoch=epoch, caption=caption[:256], png=png)
                for position, (caption, png) in enumerate(examples)
            )
        session.commit()
    return owned


def record_checkpoint(engine: Engine, claim: Claim, checkpoint: dict[str, Any]) -> bool:
    """A checkpoint is in the store: the job resumes from it from now on."""
    with session_scope(engine) as session:
        owned = _fenced_update(session, claim, checkpoint={**checkpoint, "attempt": claim.attempt})
        session.commit()
    return owned


def _checkpointed(checkpoint: dict[str, Any]):
    """The metric points a checkpoint covers: its finished epochs, and train loss up to its step."""
    return ((JobMetric.kind == "epoch") & (JobMetric.step <= checkpoint["epoch"])) | (
        (JobMetric.kind == "train") & (JobMetric.step <= checkpoint["step"])
    )


def start_from_checkpoint(engine: Engine, claim: Claim) -> bool:
    """A resumed attempt takes over the history its checkpoint covers, from the attempt that
    holds it; the points that attempt recorded after the checkpoint are dropped, since this
    attempt records them again. Other attempts' points (one that started from scratch and was
    lost before its first checkpoint) stay theirs."""
    checkpoint = claim.checkpoint
    this_job = JobMetric.job_id == claim.job_id
    if checkpoint.get("attempt") is not None:
        this_job = this_job & (JobMetric.attempt == checkpoint["attempt"])
    with session_scope(engine) as session:
        covered = session.scalars(
            select(JobMetric).where(this_job & _checkpointed(checkpoint) & (JobMetric.kind == "epoch"))
            .order_by(col(JobMetric.step).desc()).limit(1)
        ).first()
        # The history now lives in this attempt: the next resume takes it from here.
        owned = _fenced_update(
            session, claim, checkpoint={**checkpoint, "attempt": claim.attempt},
            resumed_from_epoch=checkpoint["epoch"], resumed_from_batch=checkpoint["batch"],
            progress=checkpoint.get("progress") or {}, metrics=covered.values if covered is not None else {},
        )
        if owned:
            session.execute(delete(JobMetric).where(this_job & ~_checkpointed(checkpoint)))
            session.execute(update(JobMetric).where(this_job).values(attempt=claim.attempt))
        session.commit()
    return owned


def pause(engine: Engine, claim: Claim) -> bool:
    """The child stopped at a checkpoint as asked: the job waits, paused, without spending the
    attempt. A cancel asked for meanwhile wins."""
    with session_scope(engine) as session:
        cancelled = session.execute(
            update(Job).where(fence(claim) & Job.cancel_requested).values(
                status=JobStatus.CANCELLED, finished_at=utcnow(), lease_expires_at=None, error="cancelled by request"
            )
        ).rowcount
        owned = cancelled == 1 or _fenced_update(
            session, claim, status=JobStatus.PAUSED, worker_id=None, lease_expires_at=None,
            attempts=Job.attempts - 1, pause_requested=False,
        )
        session.commit()
    return owned


def finish(
    engine: Engine,
    claim: Claim,
    status: Literal["succeeded", "failed", "cancelled", "pruned"],
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    pruned: dict[str, Any] | None = None,
) -> bool:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(), "lease_expires_at": None}
    if pruned is not None:
        values["pruned"] = pruned
    if metrics is not None:
        values["metrics"] = metrics
    if artifacts is not None:
        values["artifacts"] = artifacts
    with session_scope(engine) as session:
        owned = _fenced_update(session, claim, **values)
        session.commit()
    return owned


def release(engine: Engine, claim: Claim) -> bool:
    """Put a job back in the queue without spending an attempt (the worker is shutting down).

    The attempt is undone: its metric points go, so the next run of the same attempt number
    starts a clean history, except those its checkpoint covers, which the next run resumes
    from. A job whose cancel was asked for meanwhile ends cancelled instead.
    """
    with session_scope(engine) as session:
        job = session.get(Job, claim.job_id)
        checkpoint = job.checkpoint if job is not None else None
        cancelled = session.execute(
            update(Job).where(fence(claim) & Job.cancel_requested).values(
                status=JobStatus.CANCELLED, finished_at=utcnow(), lease_expires_at=None, error="cancelled by request"
            )
        ).rowcount
        owned = cancelled == 1 or _fenced_update(
            session, claim, status=JobStatus.QUEUED, worker_id=None, lease_expires_at=None, attempts=Job.attempts - 1,
            progress={}, metrics={},
        )
        if owned and not cancelled:
            undone = (JobMetric.job_id == claim.job_id) & (JobMetric.attempt == claim.attempt)
            if checkpoint is not None:
                undone = undone & ~_checkpointed(checkpoint)
            session.execute(delete(JobMetric).where(undone))
            notify(session)
        session.commit()
    return owned


# ---------------------------------------------------------------------------------------------
# Requests from users, and the reaper
# ---------------------------------------------------------------------------------------------


def request_cancel(engine: Engine, job_id: int) -> Job:
    """A queued or paused job ends at once; a running one is flagged for its worker, which stops the child."""
    queued = (Job.id == job_id) & Job.status.in_((JobStatus.QUEUED, JobStatus.PAUSED))
    running = (Job.id == job_id) & (Job.status == JobStatus.RUNNING)
    # Conditional updates rather than read-then-write, so a job that changes state meanwhile
    # (claimed, finished) is judged by the state it has when the cancel lands.
    with write_session(engine) as session:
        changed = session.execute(
            update(Job).where(queued).values(status=JobStatus.CANCELLED, finished_at=utcnow(), error="cancelled before it started")
        ).rowcount
        changed = changed or _flag_running(session, running, cancel_requested=True)
        job = session.get(Job, job_id)
        session.commit()
    return _answer(job, job_id, changed, "cancel")


def _answer(job: Job | None, job_id: int, changed: int, action: str) -> Job:
    """A user's request's answer: the job as it is now, or why the request changed nothing."""
    if job is None:
        raise JobNotFound(job_id)
    if not changed:
        raise JobStateConflict(job_id, job.status, action)
    return job


def _flag_running(session: Session, running, **flag: bool) -> int:
    """Ask a running job's worker to end it; its slot is woken to look at once (JobWakeups)."""
    flagged = session.execute(update(Job).where(running).values(**flag)).rowcount
    if flagged:
        notify(session)
    return flagged


def ending_requested(engine: Engine, claim: Claim) -> bool:
    """Whether a cancel or a pause waits for this attempt: a read, far cheaper than a renewal."""
    with session_scope(engine) as session:
        return bool(session.scalar(
            select(func.count()).select_from(Job).where(fence(claim) & (Job.cancel_requested | Job.pause_requested))
        ))


def request_pause(engine: Engine, job_id: int) -> Job:
    """A queued job is paused at once; a running one is flagged for its worker, whose child
    checkpoints where it is and exits."""
    queued = (Job.id == job_id) & (Job.status == JobStatus.QUEUED)
    running = (Job.id == job_id) & (Job.status == JobStatus.RUNNING) & ~Job.cancel_requested
    with write_session(engine) as session:
        job = session.get(Job, job_id)
        recipe = recipes.registry().recipes.get(job.recipe) if job is not None else None
        if recipe is not None and not recipe.checkpoints and job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise JobStateConflict(job_id, job.status, "pause", why=(
                f"job {job_id} is {job.status}; its recipe {recipe.name} does not checkpoint (run.checkpoint), "
                "so it cannot pause and resume: cancel it instead"
            ))
        changed = session.execute(update(Job).where(queued).values(status=JobStatus.PAUSED)).rowcount
        changed = changed or _flag_running(session, running, pause_requested=True)
        if job is not None:
            session.refresh(job)  # read before the update: what it changed, not what was there
        session.commit()
    return _answer(job, job_id, changed, "pause")


def request_resume(engine: Engine, job_id: int) -> Job:
    """A paused job goes back to the queue; its next attempt starts from its checkpoint."""
    with write_session(engine) as session:
        changed = session.execute(
            update(Job).where((Job.id == job_id) & (Job.status == JobStatus.PAUSED)).values(status=JobStatus.QUEUED)
        ).rowcount
        job = session.get(Job, job_id)
        if changed:
            notify(session)
        session.commit()
    return _answer(job, job_id, changed, "resume")


def retry(
    engine: Engine, job_id: int, *, max_attempts: int, max_queued: int | None = None, owner: str = ADMIN_NAME
) -> Job:
    """A new job for `owner` with the same parameters as a failed or cancelled one, linked to it."""
    original = get_job(engine, job_id)
    if original.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobStateConflict(job_id, original.status, "retry")
    try:
        recipe = recipes.registry().get(original.recipe)
        params = recipe.stored_params({**original.params, "name": original.name})
    except (recipes.UnknownRecipe, recipes.RecipeMismatch) as exc:
        raise JobStateConflict(job_id, original.status, "retry", why=f"cannot retry job {job_id}: {exc}") from None
    return submit(
        engine, params, default_wandb_mode=original.params["wandb_mode"], max_attempts=max_attempts,
        max_queued=max_queued, retry_of=job_id, owner=owner, recipe=recipe,
    )


def update_job(engine: Engine, job_id: int, changes: JobUpdate) -> Job:
    """Rename a job, replace its tags or its notes, in any state; fields not given keep their values."""
    given = changes.model_dump(include=changes.model_fields_set)
    with write_session(engine) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        if "name" in given:
            job.name = given["name"]
        # The job's name and tags are also its W&B run's: a job that has not started yet gets the new ones.
        job.params = {**job.params, **{key: given[key] for key in ("name", "tags") if key in given}}
        if "notes" in given:
            job.notes = given["notes"] or None
        session.commit()
    return job


def delete_job(engine: Engine, job_id: int, settings: Settings) -> None:
    """Remove a finished job: its row, its metric points, log and examples, its objects in the
    artifact store (model, checkpoint) and what earlier versions kept in its local folder.

    A retry that points at it keeps working, unlinked. Its outcome and times stay in deleted_jobs,
    so the counters and histograms of /metrics never go down.
    """
    with write_session(engine) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        if job.status not in FINISHED_STATUSES:
            raise JobStateConflict(job_id, job.status, "delete")
        if job.sweep_id is not None and session.scalar(select(Sweep.status).where(Sweep.id == job.sweep_id)) == "running":
            # Its sweep counts its trials: it would run one more in its place.
            raise JobStateConflict(job_id, f"a trial of running sweep {job.sweep_id}", "delete")
        session.add(DeletedJob(
            id=job.id, status=job.status, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at
        ))
        session.execute(update(Job).where(Job.retry_of == job_id).values(retry_of=None))
        for table in (JobMetric, JobLog, JobExample):
            session.execute(delete(table).where(table.job_id == job_id))
        session.execute(delete(Job).where(Job.id == job_id))
        session.commit()
    log.info("job %d deleted", job_id, extra={"job_id": job_id})
    folder = settings.job_files(job_id).root
    try:
        settings.store.delete_job(job_id)
        shutil.rmtree(folder, ignore_errors=not folder.exists())
    except (StoreError, OSError) as exc:
        log.warning("job %d deleted, but its files could not all be removed: %s", job_id, exc)


def record_synced(engine: Engine, job_id: int, *, url: str | None) -> bool:
    """A finished job's offline W&B run was uploaded (`trainboard sync`): the job is online now,
    with its run's URL. Not fenced: no worker writes to a finished job; only a finished job that
    is still offline changes."""
    with session_scope(engine) as session:
        changed = session.execute(
            update(Job)
            .where((Job.id == job_id) & col(Job.status).in_(FINISHED_STATUSES) & (Job.wandb_mode == "offline"))
            .values(wandb_mode="online", wandb_url=url and url[:512])
        ).rowcount
        session.commit()
    return changed == 1


def reap_expired(engine: Engine, now: datetime | None = None) -> int:
    """Requeue running jobs whose lease expired, or fail them once their attempts are used up."""
    now = now if now is not None else _clock(engine)
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now)
    with session_scope(engine) as session:
        cancelled = session.execute(
            update(Job).where(expired & Job.cancel_requested).values(
                status=JobStatus.CANCELLED, finished_at=now, lease_expires_at=None, error="cancelled; its worker was lost"
            )
        ).rowcount
        lost = session.execute(
            update(Job).where(expired & (Job.attempts >= Job.max_attempts)).values(
                status=JobStatus.FAILED, finished_at=now, lease_expires_at=None,
                error="worker lost: its lease expired on the last attempt",
            )
        ).rowcount
        requeued = session.execute(
            update(Job).where(expired).values(status=JobStatus.QUEUED, worker_id=None, lease_expires_at=None)
        ).rowcount
        if requeued:
            notify(session)
        session.commit()
    return cancelled + lost + requeued


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def register_worker(engine: Engine, worker: Worker) -> None:
    with write_session(engine) as session:
        session.merge(worker)
        session.commit()


def worker_heartbeat(engine: Engine, worker_id: str, slots: list[dict[str, Any]], *, stopped: bool = False) -> None:
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "slots": slots}
    if stopped:
        values["stopped_at"] = now
    with session_scope(engine) as session:
        session.execute(update(Worker).where(Worker.id == worker_id).values(**values))
        session.commit()


def worker_alive(worker: Worker, lease_seconds: float, now: datetime) -> bool:
    """Alive: not stopped, and heartbeating within a lease (after which its jobs may be reaped)."""
    return worker.stopped_at is None and now - as_utc(worker.heartbeat_at) < timedelta(seconds=lease_seconds)


# ---------------------------------------------------------------------------------------------
# Sessions, and wake-ups (PostgreSQL LISTEN/NOTIFY; SQLite's data_version)
# ---------------------------------------------------------------------------------------------


def write_session(engine: Engine) -> Session:
    """A session for a transaction that reads before it writes: BEGIN IMMEDIATE on SQLite, so it
    waits for the write lock up front instead of failing on a stale snapshot."""
    if is_sqlite(engine):
        engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    return Session(engine, expire_on_commit=False)


def _serialise_submits(session: Session) -> None:
    """Count-then-insert under a cap must not interleave. SQLite: _write_session's BEGIN IMMEDIATE
    already holds the write lock. PostgreSQL: an advisory lock held until this transaction ends
    (READ COMMITTED would let every concurrent submit count the same queue)."""
    if not is_sqlite(session.get_bind()):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SUBMIT_LOCK_KEY})


def notify(session: Session) -> None:
    """Wake PostgreSQL workers' slots when this transaction commits (NOTIFY is transactional):
    idle ones to claim, busy ones to look for a cancel or pause."""
    if not is_sqlite(session.get_bind()):
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


class JobWakeups:
    """Lets an idle worker slot sleep until a job may be waiting, and a busy one notice a cancel
    or pause at once (`changed`), on a connection of its own.

    PostgreSQL: it LISTENs on NOTIFY_CHANNEL, so a submit, a requeue, a cancel or a pause wakes the slot at once.
    SQLite has no notifications; instead it reads PRAGMA data_version, which changes whenever
    another connection commits, every SQLITE_CHECK_SECONDS: far cheaper than a claim, which takes
    the write lock. On both, the timeout keeps plain polling as the fallback (a lost connection,
    a pooler that drops LISTEN).
    """

    SQLITE_CHECK_SECONDS = 0.05
    STOP_CHECK_SECONDS = 0.25

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sqlite = is_sqlite(engine)
        self._connection: Any = None
        self._data_version: int | None = None
        self._warned = False

    def listen(self) -> None:
        """Call before each look at the queue: whatever commits after it ends the next wait()."""
        try:
            if self._connection is None:
                self._connection = self._connect()
            if self.sqlite:
                self._data_version = self._read_data_version()
        except (DBAPIError, psycopg.Error, sqlite3.Error) as exc:
            self._fall_back("cannot watch for new jobs, polling instead", exc)
            return
        self._warned = False

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Return when a job may be waiting, after `timeout` seconds, or soon after `stop` is set."""
        if self._connection is None:
            stop.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                if self.sqlite:
                    stop.wait(min(remaining, self.SQLITE_CHECK_SECONDS))
                    if self._read_data_version() != self._data_version:
                        return
                elif list(self._connection.notifies(timeout=min(remaining, self.STOP_CHECK_SECONDS), stop_after=1)):
                    # One look at the queue answers every notification that has arrived.
                    list(self._connection.notifies(timeout=0))
                    return
        except (psycopg.Error, sqlite3.Error) as exc:
            self._fall_back("lost the connection that watches for new jobs, polling until it is back", exc)
            stop.wait(max(0.0, deadline - time.monotonic()))

    def changed(self) -> bool:
        """Without waiting: whether anything may have changed since listen() or the last call."""
        if self._connection is None:
            return False
        try:
            if self.sqlite:
                version, self._data_version = self._data_version, self._read_data_version()
                return version != self._data_version
            return bool(list(self._connection.notifies(timeout=0)))
        except (psycopg.Error, sqlite3.Error) as exc:
            self._fall_back("lost the connection that watches for cancels, noticing them at lease renewals", exc)
            return False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> Any:
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        pooled.detach()  # LISTEN and data_version are per connection: keep this one out of the pool
        if not self.sqlite:
            connection.rollback()
            connection.autocommit = True
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return connection

    def _read_data_version(self) -> int:
        return self._connection.execute("PRAGMA data_version").fetchone()[0]

    def _fall_back(self, what: str, exc: Exception) -> None:
        self.close()
        if not self._warned:
            log.warning("%s: %s", what, str(exc).strip().splitlines()[0])
            self._warned = True
