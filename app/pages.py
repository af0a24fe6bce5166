"""HTML pages: the job list (and the fragment of it that updates live), the new-job form, a job's
page (and its live fragment), the comparison of jobs, and the workers.

Routes only: the reads are app/reads.py's, the form's fields app/forms.py's, the values' wording
app/formatting.py's and the charts app/charts.py's. Pages at URLs the JSON API shares are
`PageRoute`s: they answer browsers, and every other request falls through to the API.
"""

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import Engine

from app import charts, forms, queue, reads
from app.deps import MAX_JOB_ID, EngineDep, JobId, PageRoute, SettingsDep
from app.formatting import loss, param_value, percent, progress_view
from app.inputs import whole_number
from app.models import ACTIVE_STATUSES, STATUSES, Job, JobCreate, JobPublic, JobStatus, utcnow
from app.settings import Settings
from app.templating import templates

router = APIRouter(include_in_schema=False)
# The pages at URLs the JSON API serves too; included before the API's router.
shared_router = APIRouter(include_in_schema=False, route_class=PageRoute)

LIST_COLUMNS = ("lr", "batch_size", "epochs", "model", "dataset")
LOG_TAIL_BYTES = 20_000
COMPARE_MIN, COMPARE_MAX = 2, 10
# How often the job page asks for its live fragment while the job is queued or running, and the
# list for its own (always: jobs submitted from scripts appear in it).
LIVE_INTERVAL_MS = 2000
LIST_LIVE_INTERVAL_MS = 5000


# ---------------------------------------------------------------------------------------------
# The form
# ---------------------------------------------------------------------------------------------


def _render_form(
    request: Request,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = 200,
    clone_of: Job | None = None,
    missing_clone: int | None = None,
    refusal: str | None = None,
) -> HTMLResponse:
    context = {
        "refusal": refusal,
        "fields": forms.form_fields(),
        "presets": forms.form_presets(),
        "preset_help": forms.preset_help(),
        "values": values,
        "errors": errors,
        "clone_of": clone_of,
        "missing_clone": missing_clone,
    }
    return templates.TemplateResponse(request, "new.html", context, status_code=status_code)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_form(
    request: Request,
    engine: EngineDep,
    clone: Annotated[int | None, Query(ge=1, le=MAX_JOB_ID)] = None,
    preset: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    if clone is None:
        return _render_form(request, forms.form_presets().get(preset or "") or forms.default_values(), {})
    try:
        original = queue.get_job(engine, clone)
    except queue.JobNotFound:
        return _render_form(request, forms.default_values(), {}, status.HTTP_404_NOT_FOUND, missing_clone=clone)
    # The clone gets a name of its own; two runs with one name are confusing in W&B.
    return _render_form(request, forms.form_values({**original.params, "name": None}), {}, clone_of=original)


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job_form(request: Request, engine: EngineDep, settings: SettingsDep):
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        params = JobCreate.model_validate(forms.parse_form(form))
    except ValidationError as exc:
        errors = {str(error["loc"][0]): error["msg"] for error in exc.errors() if error["loc"]}
        return _render_form(request, forms.submitted_values(form), errors, status.HTTP_422_UNPROCESSABLE_CONTENT)
    try:
        job = queue.submit(
            engine, params, default_wandb_mode=settings.wandb_mode,
            max_attempts=settings.max_attempts, max_queued=settings.max_queued,
        )
    except queue.QueueFull as exc:
        return _render_form(request, forms.submitted_values(form), {}, status.HTTP_429_TOO_MANY_REQUESTS, refusal=str(exc))
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# The list
# ---------------------------------------------------------------------------------------------


def _page_link(status_filter: str | None, search: str | None, limit: int, offset: int) -> str:
    query = {"status": status_filter, "q": search, "offset": offset or None, "limit": limit if limit != 50 else None}
    encoded = urlencode({key: value for key, value in query.items() if value})
    return "/?" + encoded if encoded else "/"


@dataclass(frozen=True)
class ListQuery:
    """What the list shows: `/`, its live fragment `/live` and a browser's `/jobs` take the same
    query parameters."""

    status_filter: JobStatus | None
    search: str | None
    limit: int
    offset: int


def list_query(
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    search: Annotated[str | None, Query(alias="q", max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ListQuery:
    known = JobStatus(status_filter) if status_filter in STATUSES else None
    return ListQuery(known, (search or "").strip() or None, limit, offset)


ListQueryDep = Annotated[ListQuery, Depends(list_query)]


@router.get("/", response_class=HTMLResponse)
def index(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    return _render_index(request, engine, query)


@shared_router.get("/jobs", response_class=HTMLResponse)
def jobs_index(
    request: Request,
    engine: EngineDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    """A browser's `GET /jobs`: the list, with the JSON API's query parameters."""
    return _render_index(request, engine, ListQuery(status_filter, None, limit, offset))


@router.get("/live", response_class=HTMLResponse)
def index_live_fragment(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    """The part of the list that changes (counts, rows, pages) for the same query as `/`; the
    list's script polls it and swaps it in."""
    response = _render_index(request, engine, query, template="index_live.html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _render_index(request: Request, engine: Engine, query: ListQuery, *, template: str = "index.html") -> HTMLResponse:
    status_filter, search, limit, offset = query.status_filter, query.search, query.limit, query.offset
    listing = reads.list_jobs(engine, status=status_filter, search=search, limit=limit, offset=offset)
    jobs = [JobPublic.from_job(job) for job in listing.jobs]
    total = listing.total
    title = "trainboard"
    if search or status_filter:
        matching = f" matching “{search}”" if search else ""
        title = f"{total} {status_filter + ' ' if status_filter else ''}jobs{matching} · trainboard"
    return templates.TemplateResponse(
        request,
        template,
        {
            "jobs": jobs,
            "progress": {job.id: progress_view(job) for job in jobs if job.status == JobStatus.RUNNING},
            "total": total,
            "everything": sum(listing.counts.values()),
            "counts": listing.counts,
            "limit": limit,
            "offset": offset,
            "status_filter": status_filter,
            "search": search,
            "statuses": STATUSES,
            "columns": LIST_COLUMNS,
            "newer": _page_link(status_filter, search, limit, max(offset - limit, 0)) if offset > 0 else None,
            "older": _page_link(status_filter, search, limit, offset + limit) if offset + limit < total else None,
            "status_link": lambda s: _page_link(s, search, limit, 0),
            "clear_search": _page_link(status_filter, None, limit, 0),
            "title": title,
            "live_src": "/live" + _page_link(status_filter, search, limit, offset).removeprefix("/"),
            "live_interval": LIST_LIVE_INTERVAL_MS,
            "compare_max": COMPARE_MAX,
        },
    )


# ---------------------------------------------------------------------------------------------
# A job: its page, the fragment the page polls while the job is queued or running, its buttons
# ---------------------------------------------------------------------------------------------


def _job_context(engine: Engine, settings: Settings, job: Job) -> dict[str, Any]:
    public = JobPublic.from_job(job)
    points = reads.metric_points(engine, [job])[job.id]
    log = settings.job_files(job.id).log_tail(LOG_TAIL_BYTES)
    if len(log) >= LOG_TAIL_BYTES and "\n" in log:
        log = log.split("\n", 1)[1]
    return {
        "job": public,
        "active": job.status in ACTIVE_STATUSES,
        "progress": progress_view(public),
        "epochs": [values for _, values in points["epoch"]],
        "charts": charts.draw_charts([(job.name, points)]),
        "examples": reads.read_examples(settings, job.id),
        "log": log,
        "live_interval": LIVE_INTERVAL_MS,
    }


@shared_router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: JobId, request: Request, engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    job = queue.get_job(engine, job_id)
    return templates.TemplateResponse(request, "job.html", _job_context(engine, settings, job))


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live_fragment(job_id: JobId, request: Request, engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    """The parts of a job's page that change while it runs; the page's script swaps them in."""
    try:
        job = queue.get_job(engine, job_id)
    except queue.JobNotFound as exc:
        return HTMLResponse(f"<p>{exc}</p>", status_code=status.HTTP_404_NOT_FOUND)
    response = templates.TemplateResponse(request, "job_live.html", _job_context(engine, settings, job))
    response.headers["Cache-Control"] = "no-store"
    return response


@shared_router.post("/jobs/{job_id}/cancel")
def cancel_button(job_id: JobId, engine: EngineDep) -> RedirectResponse:
    queue.request_cancel(engine, job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=status.HTTP_303_SEE_OTHER)


@shared_router.post("/jobs/{job_id}/retry")
def retry_button(job_id: JobId, engine: EngineDep, settings: SettingsDep) -> RedirectResponse:
    job = queue.retry(engine, job_id, max_attempts=settings.max_attempts, max_queued=settings.max_queued)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# Comparing jobs
# ---------------------------------------------------------------------------------------------


def _parse_ids(raw: list[str]) -> tuple[list[int], str | None]:
    ids: list[int] = []
    for part in (piece.strip() for value in raw for piece in value.split(",")):
        if not part:
            continue
        job_id = whole_number(part, max_digits=len(str(MAX_JOB_ID)))
        if job_id is None or not 1 <= job_id <= MAX_JOB_ID:
            return [], f"{part!r} is not a job id."
        if job_id not in ids:
            ids.append(job_id)
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        return ids, f"Pick {COMPARE_MIN} to {COMPARE_MAX} jobs to compare; {len(ids)} given."
    return ids, None


def _compare_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(key for job in jobs for key in job.params))
    rows = []
    for name in names:
        values = [param_value(job.params.get(name)) for job in jobs]
        if name != "name":
            rows.append({"name": name, "values": values, "differs": len(set(values)) > 1})
    return rows


def _final_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    rows = []
    for key, label, fmt, best in (
        ("test_accuracy", "Test Accuracy", percent, max),
        ("test_loss", "Test Loss", loss, min),
        ("train_loss", "Train loss", loss, min),
        ("train_images_per_second", "Train images/s", lambda v: f"{v:,.0f}", max),
    ):
        numbers = [job.metrics.get(key) for job in jobs]
        present = [n for n in numbers if isinstance(n, int | float)]
        winner = best(present) if len(present) > 1 else None
        rows.append({
            "label": label,
            "cells": [
                {"text": fmt(n) if isinstance(n, int | float) else "", "best": winner is not None and n == winner}
                for n in numbers
            ],
        })
    return rows


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, engine: EngineDep, ids: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
    job_ids, problem = _parse_ids(ids or [])
    jobs: list[Job] = []
    missing = []
    if problem is None:
        for job_id in job_ids:
            try:
                jobs.append(queue.get_job(engine, job_id))
            except queue.JobNotFound:
                missing.append(job_id)
        if missing:
            problem = "No job " + ", ".join(f"#{job_id}" for job_id in missing) + "."
    if problem is not None:
        code = status.HTTP_404_NOT_FOUND if missing else status.HTTP_400_BAD_REQUEST
        return templates.TemplateResponse(request, "compare.html", {"problem": problem}, status_code=code)
    points = reads.metric_points(engine, jobs)
    public = [JobPublic.from_job(job) for job in jobs]
    return templates.TemplateResponse(
        request,
        "compare.html",
        {
            "problem": None,
            "jobs": public,
            "charts": charts.draw_charts([(f"#{job.id} {job.name}", points[job.id]) for job in jobs]),
            "rows": _compare_rows(public),
            "finals": _final_rows(public),
        },
    )


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


@shared_router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    workers = reads.worker_views(engine, settings.lease_seconds, utcnow())
    return templates.TemplateResponse(request, "workers.html", {"workers": workers})
