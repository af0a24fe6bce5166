"""The JSON API: submit, list (search, filter, sort), read, edit, cancel, retry and delete jobs;
artifacts, logs, workers, health.

Browsers asking for a URL this API shares get app/pages.py's page instead (see deps.PageRoute);
every route here answers JSON (or a file) only.
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import Engine, text

from app import queue, reads, sweeps, users
from app.deps import (
    CurrentUser, EngineDep, JobBody, JobId, JobToCancel, JobToDelete, JobToEdit, JobToPause, JobToResume, JobToRetry, KnownQueryOnly,
    SettingsDep, SweepConfigBody, SweepId,
)
from app.models import (
    Job, JobPage, JobPublic, JobStatus, JobUpdate, MetricPoint, RecipePublic, SweepPage, SweepPublic, Tag, UserName,
    WorkerPublic, utcnow,
)
from app.settings import Settings

router = APIRouter()

NOT_FOUND = {404: {"description": "No job with this id"}}
CONFLICT = {409: {"description": "The job is in a state that does not allow this; the detail names it"}}
QUEUE_FULL = {429: {"description": "TRAINBOARD_MAX_QUEUED jobs are already waiting"}}
FORBIDDEN = {403: {"description": "The job is someone else's; only its owner or an admin may change it"}}


async def refusal(_request: Request, exc: Exception) -> JSONResponse:
    """Refusals as HTTP answers: unknown job 404, someone else's job 403, wrong state 409, full queue 429."""
    if isinstance(exc, queue.QueueFull):
        return JSONResponse({"detail": str(exc)}, status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": "30"})
    codes = {
        queue.JobNotFound: status.HTTP_404_NOT_FOUND, sweeps.SweepNotFound: status.HTTP_404_NOT_FOUND,
        users.NotAllowed: status.HTTP_403_FORBIDDEN,
    }
    return JSONResponse({"detail": str(exc)}, codes.get(type(exc), status.HTTP_409_CONFLICT))


REFUSALS = (
    queue.JobNotFound, queue.JobStateConflict, queue.QueueFull, users.NotAllowed, sweeps.SweepNotFound, sweeps.SweepStateConflict,
)


def _view(engine: Engine, settings: Settings, job: Job) -> JobPublic:
    """A job as the API shows it; a queued one with its place in the queue and why it waits."""
    return reads.job_views(engine, [job], settings.lease_seconds)[0]


@router.get("/healthz", tags=["health"])
def healthz(engine: EngineDep) -> dict[str, str]:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.post(
    "/jobs", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=QUEUE_FULL, tags=["jobs"],
    openapi_extra={"requestBody": {"content": {"application/json": {
        "examples": {
            "tutorial": {"summary": "The tutorial's config", "value": {}},
            "lr": {"summary": "A higher learning rate, three epochs", "value": {"lr": 0.05, "epochs": 3}},
            "smoke": {"summary": "Smoke test without a download", "value": {
                "dataset": "synthetic", "pretrained": False, "epochs": 2, "train_subset": 2000, "test_subset": 500}},
        },
    }}}},
)
def create_job(engine: EngineDep, settings: SettingsDep, user: CurrentUser, response: Response, job: JobBody) -> JobPublic:
    """Queue a training job, owned by whoever sends it: `recipe` (default cifar10-resnet18, the
    tutorial) and that recipe's fields, every one optional; defaults are the recipe's."""
    created = queue.submit(
        engine, job.params, default_wandb_mode=settings.wandb_mode, max_attempts=settings.max_attempts,
        max_queued=settings.max_queued, owner=user.name, recipe=job.recipe,
    )
    response.headers["Location"] = f"/jobs/{created.id}"
    return _view(engine, settings, created)


@router.get("/jobs", response_model=JobPage, dependencies=[KnownQueryOnly], tags=["jobs"])
def list_jobs(
    engine: EngineDep,
    settings: SettingsDep,
    search: Annotated[
        str | None, Query(alias="q", max_length=128, pattern=r"^[^\x00]*$", description="Name, tag or notes contain it")
    ] = None,
    tag: Annotated[Tag | None, Query(description="One of the job's tags is exactly it")] = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    owner: Annotated[UserName | None, Query(description="Only this user's jobs")] = None,
    sweep_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only this sweep's trials")] = None,
    created_after: Annotated[datetime | None, Query(description="Created at or after it (ISO 8601; no offset: UTC)")] = None,
    created_before: Annotated[datetime | None, Query(description="Created before it (ISO 8601; no offset: UTC)")] = None,
    sort: Annotated[
        reads.JobSort, Query(description="A column or final metric, - first for descending; jobs without it come last")
    ] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    """Jobs, newest first unless `sort` says otherwise. Unknown query parameters are refused."""
    listing = reads.list_jobs(
        engine, status=status_filter, search=search, tag=tag, owner=owner, created_after=created_after,
        created_before=created_before, sort=sort, limit=limit, offset=offset, sweep_id=sweep_id,
    )
    items = reads.job_views(engine, listing.jobs, settings.lease_seconds)
    return JobPage(items=items, total=listing.total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=NOT_FOUND, tags=["jobs"])
def read_job(job_id: JobId, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """One job. A browser gets its page, anything else its JSON."""
    return _view(engine, settings, queue.get_job(engine, job_id))


@router.patch("/jobs/{job_id}", response_model=JobPublic, responses={**NOT_FOUND, **FORBIDDEN}, tags=["jobs"])
def update_job(job: JobToEdit, changes: JobUpdate, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """Rename a job, replace its tags, or write its notes; fields left out keep their values."""
    return _view(engine, settings, queue.update_job(engine, job.id, changes))


@router.delete(
    "/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
    responses={**NOT_FOUND, **FORBIDDEN, **CONFLICT}, tags=["jobs"],
)
def delete_job(job: JobToDelete, engine: EngineDep, settings: SettingsDep) -> None:
    """A finished job goes with its metric points and files (model, log, W&B run folder). A retry
    of it stays, unlinked; /metrics keeps counting it."""
    queue.delete_job(engine, job.id, settings)


# The metric columns (step, attempt) are 32-bit; a training run's steps stay far below.
MAX_STEP = 2**31 - 1
METRICS_PAGE_MAX = 10_000


@router.get(
    "/jobs/{job_id}/metrics", response_model=list[MetricPoint], responses=NOT_FOUND, dependencies=[KnownQueryOnly],
    tags=["jobs"],
)
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


@router.get(
    "/jobs/{job_id}/log", response_class=PlainTextResponse, responses=NOT_FOUND, dependencies=[KnownQueryOnly], tags=["jobs"]
)
def read_job_log(
    job_id: JobId,
    engine: EngineDep,
    settings: SettingsDep,
    tail: Annotated[int, Query(ge=1, le=1_000_000)] = 200_000,
    offset: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
) -> PlainTextResponse:
    """The output of the job's training process, every attempt's: its last `tail` bytes, or with
    `offset` what follows that byte (at most `tail` bytes). The X-Log-Offset header says where the
    text ends: asking for `?offset=` that value returns only what was written since."""
    queue.get_job(engine, job_id)  # an unknown job is a 404
    text, end = reads.read_log(engine, settings, job_id, offset, tail)
    return PlainTextResponse(text, headers={"X-Log-Offset": str(end)})


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range within the object, or None for all of it."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    if not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        raise HTTPException(status.HTTP_416_RANGE_NOT_SATISFIABLE, f"the range {header!r} is outside the file's {size} bytes")
    return start, end


@router.get("/jobs/{job_id}/artifacts/{name}", responses=NOT_FOUND, tags=["jobs"])
def download_artifact(job_id: JobId, name: str, request: Request, engine: EngineDep, settings: SettingsDep) -> StreamingResponse:
    """A file the job produced, streamed from the artifact store (`Range` requests answer 206).
    Only names listed on the job resolve."""
    job = queue.get_job(engine, job_id)
    artifact = next((artifact for artifact in job.artifacts if artifact["name"] == name), None)
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no artifact named {name!r}")
    store = settings.store
    key = artifact.get("key") or store.key(job_id, name)
    size = store.size(key)
    if size is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, reads.missing_artifact_reason(settings, job_id, artifact))
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{name}"'}
    span = _byte_range(request.headers.get("range"), size)
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(store.read_chunks(key), media_type="application/octet-stream", headers=headers)
    start, end = span
    headers.update({"Content-Length": str(end - start + 1), "Content-Range": f"bytes {start}-{end}/{size}"})
    return StreamingResponse(
        store.read_chunks(key, start, end - start + 1), status.HTTP_206_PARTIAL_CONTENT,
        media_type="application/octet-stream", headers=headers,
    )


@router.get("/jobs/{job_id}/examples/{name}", responses=NOT_FOUND, tags=["jobs"])
def download_example(job_id: JobId, name: str, engine: EngineDep, settings: SettingsDep) -> Response:
    """One of the last evaluated epoch's example predictions (PNG). Only names it lists resolve."""
    queue.get_job(engine, job_id)  # an unknown job is a 404
    png = reads.read_example_png(engine, settings, job_id, name)
    if png is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no example named {name!r}")
    return Response(png, media_type="image/png")


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobPublic, responses={**NOT_FOUND, **FORBIDDEN, **CONFLICT}, tags=["jobs"]
)
def cancel_job(job: JobToCancel, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """Queued: cancelled at once. Running: its worker stops the training and records cancelled."""
    return _view(engine, settings, queue.request_cancel(engine, job.id))


@router.post(
    "/jobs/{job_id}/pause", response_model=JobPublic, responses={**NOT_FOUND, **FORBIDDEN, **CONFLICT}, tags=["jobs"]
)
def pause_job(job: JobToPause, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """Queued: paused at once. Running: the training checkpoints where it is (mid-epoch too) and
    stops; the job becomes `paused` without spending an attempt."""
    return _view(engine, settings, queue.request_pause(engine, job.id))


@router.post(
    "/jobs/{job_id}/resume", response_model=JobPublic, responses={**NOT_FOUND, **FORBIDDEN, **CONFLICT}, tags=["jobs"]
)
def resume_job(job: JobToResume, engine: EngineDep, settings: SettingsDep) -> JobPublic:
    """A paused job goes back to the queue and continues from its checkpoint."""
    return _view(engine, settings, queue.request_resume(engine, job.id))


@router.post(
    "/jobs/{job_id}/retry", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
    responses={**NOT_FOUND, **FORBIDDEN, **CONFLICT, **QUEUE_FULL}, tags=["jobs"],
)
def retry_job(
    original: JobToRetry, user: CurrentUser, response: Response, engine: EngineDep, settings: SettingsDep
) -> JobPublic:
    """A new job with the same parameters as a failed or cancelled one, linked to it and owned by whoever asks."""
    job = sweeps.retry(engine, settings, original, owner=user.name)
    response.headers["Location"] = f"/jobs/{job.id}"
    return _view(engine, settings, job)


SWEEP_NOT_FOUND = {404: {"description": "No sweep with this id"}}


@router.post(
    "/sweeps", status_code=status.HTTP_201_CREATED, response_model=SweepPublic, tags=["sweeps"],
    responses={
        413: {"description": "The body is over 1 MiB"},
        415: {"description": "The body is neither JSON nor YAML"},
        422: {"description": "The config is refused; each error names its key", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}},
        }},
    },
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/SweepConfig"}},
        "application/yaml": {"schema": {"type": "string", "description": "The same config as YAML (no anchors or aliases)"}},
    }}},
)
def create_sweep(
    config: SweepConfigBody, user: CurrentUser, response: Response, engine: EngineDep, settings: SettingsDep
) -> SweepPublic:
    """Start a sweep from a W&B sweep config (JSON, or YAML with `Content-Type: application/yaml`):
    its first `parallel` trials are queued at once, owned by whoever sends it."""
    sweep = sweeps.create(engine, settings, config.plan, config.document, owner=user.name)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return sweeps.sweep_view(engine, sweep.id)


@router.get("/sweeps", response_model=SweepPage, dependencies=[KnownQueryOnly], tags=["sweeps"])
def list_sweeps(
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> SweepPage:
    """Sweeps, newest first, with their progress and best trial so far."""
    items, total = sweeps.list_sweeps(engine, limit=limit, offset=offset)
    return SweepPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/sweeps/{sweep_id}", response_model=SweepPublic, responses=SWEEP_NOT_FOUND, tags=["sweeps"])
def read_sweep(sweep_id: SweepId, engine: EngineDep) -> SweepPublic:
    """One sweep with its trials, best first. A browser gets its page."""
    return sweeps.sweep_view(engine, sweep_id)


@router.post(
    "/sweeps/{sweep_id}/cancel", response_model=SweepPublic, responses={**SWEEP_NOT_FOUND, **FORBIDDEN, **CONFLICT}, tags=["sweeps"],
)
def cancel_sweep(sweep_id: SweepId, user: CurrentUser, engine: EngineDep) -> SweepPublic:
    """Stop a running sweep: no new trials; its queued trials are cancelled and its running ones stopped."""
    users.authorize(user, sweeps.get(engine, sweep_id), "cancel")
    sweeps.cancel(engine, sweep_id)
    return sweeps.sweep_view(engine, sweep_id)


@router.get("/recipes", response_model=list[RecipePublic], tags=["recipes"])
def list_recipes(engine: EngineDep, settings: SettingsDep) -> list[RecipePublic]:
    """What jobs can train: each recipe's title, version, metrics and job fields' JSON schema, and
    the live workers that have it. POST /jobs takes `recipe` and its fields."""
    return reads.recipe_views(engine, settings.lease_seconds, utcnow())


@router.get("/workers", response_model=list[WorkerPublic], tags=["workers"])
def list_workers(engine: EngineDep, settings: SettingsDep) -> list[WorkerPublic]:
    """Registered workers, their slots and what each runs; `alive` from their heartbeats."""
    return reads.worker_views(engine, settings.lease_seconds, utcnow())

