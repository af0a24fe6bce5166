"""The JSON API: submit, list, read, cancel and retry jobs; artifacts, logs, workers, health.

Browsers asking for a URL this API shares get app/pages.py's page instead (see deps.PageRoute);
every route here answers JSON (or a file) only.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from sqlalchemy import text

from app import queue, reads
from app.deps import EngineDep, JobId, SettingsDep
from app.models import JobCreate, JobPage, JobPublic, JobStatus, MetricPoint, WorkerPublic, utcnow

router = APIRouter()

NOT_FOUND = {404: {"description": "No job with this id"}}
CONFLICT = {409: {"description": "The job is in a state that does not allow this; the detail names it"}}
QUEUE_FULL = {429: {"description": "TRAINBOARD_MAX_QUEUED jobs are already waiting"}}


async def queue_refusal(_request: Request, exc: Exception) -> JSONResponse:
    """The queue's refusals as HTTP answers: unknown job 404, wrong state 409, full queue 429."""
    if isinstance(exc, queue.QueueFull):
        return JSONResponse({"detail": str(exc)}, status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": "30"})
    code = status.HTTP_404_NOT_FOUND if isinstance(exc, queue.JobNotFound) else status.HTTP_409_CONFLICT
    return JSONResponse({"detail": str(exc)}, code)


QUEUE_REFUSALS = (queue.JobNotFound, queue.JobStateConflict, queue.QueueFull)


@router.get("/healthz", tags=["health"])
def healthz(engine: EngineDep) -> dict[str, str]:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=QUEUE_FULL, tags=["jobs"])
def create_job(
    engine: EngineDep,
    settings: SettingsDep,
    response: Response,
    params: Annotated[JobCreate, Body(openapi_examples={
        "tutorial": {"summary": "The tutorial's config", "value": {}},
        "lr": {"summary": "A higher learning rate, three epochs", "value": {"lr": 0.05, "epochs": 3}},
        "smoke": {"summary": "Smoke test without a download", "value": {
            "dataset": "synthetic", "pretrained": False, "epochs": 2, "train_subset": 2000, "test_subset": 500}},
    })] = None,
) -> JobPublic:
    """Queue a training job. Every field is optional; defaults are the tutorial's config."""
    job = queue.submit(
        engine, params or JobCreate(), default_wandb_mode=settings.wandb_mode,
        max_attempts=settings.max_attempts, max_queued=settings.max_queued,
    )
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)


@router.get("/jobs", response_model=JobPage, tags=["jobs"])
def list_jobs(
    engine: EngineDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    """Jobs, newest first."""
    listing = reads.list_jobs(engine, status=status_filter, limit=limit, offset=offset)
    return JobPage(items=[JobPublic.from_job(job) for job in listing.jobs], total=listing.total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=NOT_FOUND, tags=["jobs"])
def read_job(job_id: JobId, engine: EngineDep) -> JobPublic:
    """One job. A browser gets its page, anything else its JSON."""
    return JobPublic.from_job(queue.get_job(engine, job_id))


# The metric columns (step, attempt) are 32-bit; a training run's steps stay far below.
MAX_STEP = 2**31 - 1
METRICS_PAGE_MAX = 10_000


@router.get("/jobs/{job_id}/metrics", response_model=list[MetricPoint], responses=NOT_FOUND, tags=["jobs"])
def read_job_metrics(
    job_id: JobId,
    engine: EngineDep,
    kind: Annotated[Literal["epoch", "train"] | None, Query(description="epoch or train; both when left out")] = None,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_STEP, description="default: the job's current attempt")] = None,
    after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="only points after this step")] = None,
    limit: Annotated[int, Query(ge=1, le=METRICS_PAGE_MAX)] = METRICS_PAGE_MAX,
    max_points: Annotated[int | None, Query(ge=1, le=METRICS_PAGE_MAX, description="thin each kind to this many")] = None,
) -> list[MetricPoint]:
    """One attempt's metric history in (kind, step) order: per epoch (evaluation) and per
    log_interval (train loss). Page a kind with `after_step`; thin it for a chart with `max_points`."""
    job = queue.get_job(engine, job_id)
    return reads.job_metrics(
        engine, job_id, kind, attempt=attempt or job.attempts, after_step=after_step, limit=limit, max_points=max_points
    )


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse, responses=NOT_FOUND, tags=["jobs"])
def read_job_log(
    job_id: JobId, engine: EngineDep, settings: SettingsDep, tail: Annotated[int, Query(ge=1, le=1_000_000)] = 200_000
) -> PlainTextResponse:
    """The output of the job's training process (the last `tail` bytes)."""
    queue.get_job(engine, job_id)  # an unknown job is a 404
    return PlainTextResponse(settings.job_files(job_id).log_tail(tail))


@router.get("/jobs/{job_id}/artifacts/{name}", responses=NOT_FOUND, tags=["jobs"])
def download_artifact(job_id: JobId, name: str, engine: EngineDep, settings: SettingsDep) -> FileResponse:
    """A file the job produced. Only names listed on the job resolve."""
    job = queue.get_job(engine, job_id)
    if name not in {artifact["name"] for artifact in job.artifacts}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no artifact named {name!r}")
    path = settings.job_files(job_id).artifact(name)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"artifact {name!r} of job {job_id} is missing on disk")
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@router.get("/jobs/{job_id}/examples/{name}", responses=NOT_FOUND, tags=["jobs"])
def download_example(job_id: JobId, name: str, engine: EngineDep, settings: SettingsDep) -> FileResponse:
    """One of the last evaluated epoch's example predictions (PNG). Only names it lists resolve."""
    queue.get_job(engine, job_id)  # an unknown job is a 404
    examples = reads.read_examples(settings, job_id) or {"examples": []}
    if name not in {example["file"] for example in examples["examples"]}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no example named {name!r}")
    return FileResponse(settings.job_files(job_id).examples_dir / name, media_type="image/png")


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses={**NOT_FOUND, **CONFLICT}, tags=["jobs"])
def cancel_job(job_id: JobId, engine: EngineDep) -> JobPublic:
    """Queued: cancelled at once. Running: its worker stops the training and records cancelled."""
    return JobPublic.from_job(queue.request_cancel(engine, job_id))


@router.post(
    "/jobs/{job_id}/retry", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
    responses={**NOT_FOUND, **CONFLICT, **QUEUE_FULL}, tags=["jobs"],
)
def retry_job(job_id: JobId, response: Response, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """A new job with the same parameters as a failed or cancelled one, linked to it."""
    job = queue.retry(engine, job_id, max_attempts=settings.max_attempts, max_queued=settings.max_queued)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)


@router.get("/workers", response_model=list[WorkerPublic], tags=["workers"])
def list_workers(engine: EngineDep, settings: SettingsDep) -> list[WorkerPublic]:
    """Registered workers, their slots and what each runs; `alive` from their heartbeats."""
    return reads.worker_views(engine, settings.lease_seconds, utcnow())

