"""HTML pages rendered on the server: the job list, the new-job form, a job's page (and the
fragment of it that updates live), the comparison of jobs, workers."""

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import Engine, func, or_, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app import charts, queue
from app.db import session_scope
from app.deps import MAX_JOB_ID, EngineDep, JobId, SettingsDep
from app.models import STATUSES, Job, JobCreate, JobMetric, JobPublic, as_utc, utcnow
from app.settings import Settings

TEMPLATES_DIR = Path(str(files("templates")))
templates = Jinja2Templates(directory=TEMPLATES_DIR)
router = APIRouter(include_in_schema=False)

LIST_COLUMNS = ("lr", "batch_size", "epochs", "model", "dataset")
LOG_TAIL_BYTES = 20_000
EXAMPLES_DIR = "examples"  # in the job's folder, written by worker/train.py's save_examples
COMPARE_MIN, COMPARE_MAX = 2, 10
# How often the job page asks for its live fragment while the job is queued or running, and the
# list for its own (always: jobs submitted from scripts appear in it).
LIVE_INTERVAL_MS = 2000
LIST_LIVE_INTERVAL_MS = 5000


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return _duration(utcnow() - as_utc(moment)) + " ago"


def _short_age(moment: datetime | None) -> str:
    """The largest unit only ("3h ago"): the list has many columns and the exact time is on hover."""
    if moment is None:
        return ""
    seconds = int((utcnow() - as_utc(moment)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def _duration(delta: timedelta | float | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _run_time(job: JobPublic) -> str:
    if job.started_at is None:
        return ""
    return _duration((job.finished_at or utcnow()) - job.started_at)


def _param_value(value: Any) -> str:
    """Parameters as a person would type them into the form, not as Python prints them."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    return str(value)


def _number(value: float | None, pattern: str) -> str:
    """A metric as text; a missing one (a diverged run's NaN is stored as null) as a dash."""
    if value is None:
        return "\u2014"
    return pattern.format(value) if "{" in pattern else pattern % value


templates.env.filters["number"] = _number
templates.env.filters["age"] = _age
templates.env.filters["short_age"] = _short_age
templates.env.filters["duration"] = _duration
templates.env.filters["param"] = _param_value
templates.env.globals["run_time"] = _run_time


def read_tail(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - max_bytes))
            return log.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------------------------------------
# The form, generated from JobCreate's schema so the bounds and help texts have one source
# ---------------------------------------------------------------------------------------------


def _bounds(option: dict[str, Any]) -> str:
    low, high = option.get("minimum"), option.get("maximum")
    above, below = option.get("exclusiveMinimum"), option.get("exclusiveMaximum")
    if low is not None and high is not None:
        return f"{low} to {high}"
    parts = []
    if low is not None:
        parts.append(f"at least {low}")
    if above is not None:
        parts.append(f"more than {above}")
    if high is not None:
        parts.append(f"at most {high}")
    if below is not None:
        parts.append(f"less than {below}")
    return ", ".join(parts)


# A preset sets many fields at once, and fields given explicitly win over it; the form sends every
# field, so it offers presets as starting points (the form refilled with a preset's values) rather
# than as a field of its own that the other fields would silently override.
PRESET_FIELD = "preset"


@lru_cache
def form_presets() -> dict[str, dict[str, str]]:
    """{preset: the form's values under it}, from JobCreate itself; empty without presets."""
    spec = JobCreate.model_json_schema()["properties"].get(PRESET_FIELD)
    if spec is None:
        return {}
    return {
        name: _form_values(JobCreate.model_validate({PRESET_FIELD: name}).model_dump(mode="json"))
        for name in spec.get("enum", [])
    }


@lru_cache
def form_fields() -> list[dict[str, Any]]:
    schema = JobCreate.model_json_schema()
    fields = []
    for name, spec in schema["properties"].items():
        if name == PRESET_FIELD:
            continue
        options = [o for o in spec.get("anyOf", [spec]) if o.get("type") != "null"]
        option = options[0]
        field = {
            "name": name,
            "label": spec.get("title", name),
            "help": spec.get("description", ""),
            "default": spec.get("default"),
            "optional": len(options) < len(spec.get("anyOf", [spec])) or "default" not in spec,
        }
        kind = option.get("type")
        if "enum" in option:
            field.update(kind="select", options=option["enum"])
        elif kind == "boolean":
            field.update(kind="checkbox")
        elif kind in ("integer", "number"):
            field.update(
                kind="number",
                min=option.get("minimum"),
                max=option.get("maximum"),
                bounds=_bounds(option),
                step="1" if kind == "integer" else "any",
            )
        elif kind == "array":
            field.update(kind="tags")
        else:
            field.update(kind="text", maxlength=option.get("maxLength"))
        fields.append(field)
    return fields


def _form_values(params: dict[str, Any]) -> dict[str, str]:
    values = {PRESET_FIELD: str(params.get(PRESET_FIELD) or "")}
    for field in form_fields():
        value = params.get(field["name"], field["default"])
        if field["kind"] == "tags":
            values[field["name"]] = ", ".join(value or [])
        elif field["kind"] == "checkbox":
            values[field["name"]] = "on" if value else ""
        else:
            values[field["name"]] = "" if value is None else str(value)
    return values


def parse_form(form: dict[str, str]) -> dict[str, Any]:
    """Form strings to JobCreate input: empty means default, unchecked boxes are false."""
    params: dict[str, Any] = {}
    if form.get(PRESET_FIELD, "").strip():
        params[PRESET_FIELD] = form[PRESET_FIELD].strip()
    for field in form_fields():
        raw = form.get(field["name"], "").strip()
        if field["kind"] == "checkbox":
            params[field["name"]] = bool(raw)
        elif field["kind"] == "tags":
            params[field["name"]] = [tag.strip() for tag in raw.split(",") if tag.strip()]
        elif raw:
            params[field["name"]] = raw
    return params


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
        "fields": form_fields(),
        "presets": form_presets(),
        "preset_help": JobCreate.model_fields[PRESET_FIELD].description if PRESET_FIELD in JobCreate.model_fields else "",
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
        presets = form_presets()
        return _render_form(request, presets.get(preset or "") or _form_values(JobCreate().model_dump(mode="json")), {})
    try:
        original = queue.get_job(engine, clone)
    except queue.JobNotFound:
        defaults = _form_values(JobCreate().model_dump(mode="json"))
        return _render_form(request, defaults, {}, status.HTTP_404_NOT_FOUND, missing_clone=clone)
    # The clone gets a name of its own; two runs with one name are confusing in W&B.
    return _render_form(request, _form_values({**original.params, "name": None}), {}, clone_of=original)


def _submitted_values(form: dict[str, str]) -> dict[str, str]:
    return {name: form.get(name, "") for name in [PRESET_FIELD, *(field["name"] for field in form_fields())]}


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job_form(request: Request, engine: EngineDep, settings: SettingsDep):
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        params = JobCreate.model_validate(parse_form(form))
    except ValidationError as exc:
        errors = {str(error["loc"][0]): error["msg"] for error in exc.errors() if error["loc"]}
        return _render_form(request, _submitted_values(form), errors, status.HTTP_422_UNPROCESSABLE_CONTENT)
    try:
        job = queue.submit(
            engine, params, default_wandb_mode=settings.wandb_mode,
            max_attempts=settings.max_attempts, max_queued=settings.max_queued,
        )
    except queue.QueueFull as exc:
        return _render_form(request, _submitted_values(form), {}, status.HTTP_429_TOO_MANY_REQUESTS, refusal=str(exc))
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# The list
# ---------------------------------------------------------------------------------------------


def _search_condition(search: str):
    """Name or tag contains the text, case-insensitively. Tags are matched in the JSON text of
    params.tags, which both SQLite and PostgreSQL can extract without a table of their own."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(
        col(Job.name).ilike(pattern, escape="\\"),
        Job.params["tags"].as_string().ilike(pattern, escape="\\"),
    )


def list_page(
    engine: Engine, *, status_filter: str | None, search: str | None, limit: int, offset: int
) -> tuple[list[Job], dict[str, int]]:
    """A page of jobs, newest first, and how many jobs each status has under the search."""
    conditions = [_search_condition(search)] if search else []
    query = select(Job).where(*conditions)
    if status_filter:
        query = query.where(Job.status == status_filter)
    counts_query = select(Job.status, func.count()).where(*conditions).group_by(Job.status)
    with session_scope(engine) as session:
        jobs = list(session.scalars(query.order_by(col(Job.id).desc()).limit(limit).offset(offset)))
        counts = {row[0]: row[1] for row in session.execute(counts_query)}
    return jobs, counts


def _page_link(status_filter: str | None, search: str | None, limit: int, offset: int) -> str:
    query = {"status": status_filter, "q": search, "offset": offset or None, "limit": limit if limit != 50 else None}
    encoded = urlencode({key: value for key, value in query.items() if value})
    return "/?" + encoded if encoded else "/"


@dataclass(frozen=True)
class ListQuery:
    """What the list shows: `/` and its live fragment `/live` take the same query parameters."""

    status_filter: str | None
    search: str | None
    limit: int
    offset: int


def list_query(
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    search: Annotated[str | None, Query(alias="q", max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ListQuery:
    return ListQuery(status_filter if status_filter in STATUSES else None, search, limit, offset)


ListQueryDep = Annotated[ListQuery, Depends(list_query)]


@router.get("/", response_class=HTMLResponse)
def index(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    return render_index(request, engine, query.status_filter, query.limit, query.offset, query.search)


@router.get("/live", response_class=HTMLResponse)
def index_live_fragment(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    """The part of the list that changes (counts, rows, pages) for the same query as `/`; the
    list's script polls it and swaps it in."""
    response = render_index(
        request, engine, query.status_filter, query.limit, query.offset, query.search, template="index_live.html"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def render_index(
    request: Request,
    engine: Engine,
    status_filter: str | None,
    limit: int,
    offset: int,
    search: str | None = None,
    *,
    template: str = "index.html",
) -> HTMLResponse:
    search = (search or "").strip() or None
    rows, counts = list_page(engine, status_filter=status_filter, search=search, limit=limit, offset=offset)
    jobs = [JobPublic.from_job(job) for job in rows]
    everything = sum(counts.values())
    total = counts.get(status_filter, 0) if status_filter else everything
    query = _page_link(status_filter, search, limit, offset).removeprefix("/")
    title = "trainboard"
    if search or status_filter:
        matching = f" matching “{search}”" if search else ""
        title = f"{total} {status_filter + ' ' if status_filter else ''}jobs{matching} · trainboard"
    return templates.TemplateResponse(
        request,
        template,
        {
            "jobs": jobs,
            "progress": {job.id: progress_view(job) for job in jobs if job.status == "running"},
            "total": total,
            "everything": everything,
            "counts": counts,
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
            "live_src": "/live" + query,
            "live_interval": LIST_LIVE_INTERVAL_MS,
            "compare_max": COMPARE_MAX,
        },
    )


# ---------------------------------------------------------------------------------------------
# A job: its page, and the fragment the page polls while the job is queued or running
# ---------------------------------------------------------------------------------------------


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


def progress_view(job: JobPublic) -> dict[str, Any]:
    """Fraction done, ETA and throughput from the job's progress and latest metrics.

    The worker reports `epoch` as the epochs finished and `batch` of `batches` within the next
    one; batch == batches is the end of an epoch, whose count `epoch` already holds.
    """
    progress, metrics = job.progress, job.metrics
    epochs = progress.get("epochs") or job.params.get("epochs") or 1
    epoch = progress.get("epoch") or 0
    batch, batches = progress.get("batch") or 0, progress.get("batches") or 0
    within = batch / batches if batches and batch < batches else 0.0
    fraction = 1.0 if job.status == "succeeded" else min(1.0, (epoch + within) / epochs)
    eta_seconds = None
    if job.status == "running":
        remaining_epochs = max(0.0, epochs - epoch - within)
        if metrics.get("epoch_seconds"):
            eta_seconds = remaining_epochs * metrics["epoch_seconds"]
        elif fraction > 0 and job.started_at is not None and job.attempts == 1:
            elapsed = (utcnow() - job.started_at).total_seconds()
            eta_seconds = elapsed * (1 - fraction) / fraction
    return {
        "epoch": epoch,
        "epochs": epochs,
        "batch": batch if batch < batches else None,
        "batches": batches,
        "percent": round(100 * fraction),
        "eta": _duration(eta_seconds) if eta_seconds is not None else None,
        "images_per_second": metrics.get("train_images_per_second"),
    }


def _percent(value: float) -> str:
    return f"{value:.2f}%"


def _loss(value: float) -> str:
    return f"{value:.4f}"


# (chart id, title, kind, value name, x label, format): the charts a job page and the compare page draw.
CHARTS = (
    ("test-accuracy-chart", "Test Accuracy (%)", "epoch", "test_accuracy", "epoch", _percent),
    ("test-loss-chart", "Test Loss (per sample)", "epoch", "test_loss", "epoch", _loss),
    ("train-loss-chart", "Train loss (epoch mean)", "epoch", "train_loss", "epoch", _loss),
    ("train-loss-steps-chart", "Train loss (every log_interval batches)", "train", "train_loss", "batch", _loss),
)


def draw_charts(labelled_points: list[tuple[str, dict[str, list[tuple]]]]) -> list[tuple[str, Any]]:
    """(caption, SVG) per chart, each series one job's points."""
    drawn = []
    for chart_id, title, kind, value, x_label, value_format in CHARTS:
        if kind == "train":
            series = [charts.Series(label, points["train"]) for label, points in labelled_points]
        else:
            series = [
                charts.Series(label, [(step, values.get(value)) for step, values in points["epoch"]])
                for label, points in labelled_points
            ]
        # Every epoch keeps its own point (JobCreate bounds epochs at 1000); train-loss points are thinned.
        max_points = charts.MAX_POINTS if kind == "train" else 1000
        chart = charts.line_chart(chart_id, title, series, x_label=x_label, value_format=value_format, max_points=max_points)
        drawn.append((title, chart))
    return drawn


def read_examples(settings: Settings, job_id: int) -> dict[str, Any] | None:
    """The last evaluated epoch's "Examples": {"epoch", "examples": [{"file", "caption"}]}, or None."""
    try:
        manifest = json.loads((settings.job_dir(job_id) / EXAMPLES_DIR / "examples.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return manifest if manifest.get("examples") else None


def _job_context(engine: Engine, settings: Settings, job: Job) -> dict[str, Any]:
    public = JobPublic.from_job(job)
    points = metric_points(engine, [job])[job.id]
    log = settings.job_files(job.id).log_tail(LOG_TAIL_BYTES)
    if len(log) >= LOG_TAIL_BYTES and "\n" in log:
        log = log.split("\n", 1)[1]
    return {
        "job": public,
        "active": job.status in ("queued", "running"),
        "progress": progress_view(public),
        "epochs": [values for _, values in points["epoch"]],
        "charts": draw_charts([(job.name, points)]),
        "examples": read_examples(settings, job.id),
        "log": log,
        "live_interval": LIVE_INTERVAL_MS,
    }


def render_job(request: Request, engine: Engine, settings: Settings, job: Job) -> HTMLResponse:
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


# ---------------------------------------------------------------------------------------------
# Comparing jobs
# ---------------------------------------------------------------------------------------------


def _parse_ids(raw: list[str]) -> tuple[list[int], str | None]:
    ids: list[int] = []
    for part in (piece.strip() for value in raw for piece in value.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_JOB_ID:
            return [], f"{part!r} is not a job id."
        if int(part) not in ids:
            ids.append(int(part))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        return ids, f"Pick {COMPARE_MIN} to {COMPARE_MAX} jobs to compare; {len(ids)} given."
    return ids, None


def _compare_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(key for job in jobs for key in job.params))
    rows = []
    for name in names:
        values = [_param_value(job.params.get(name)) for job in jobs]
        if name != "name":
            rows.append({"name": name, "values": values, "differs": len(set(values)) > 1})
    return rows


def _final_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    rows = []
    for key, label, fmt, best in (
        ("test_accuracy", "Test Accuracy", _percent, max),
        ("test_loss", "Test Loss", _loss, min),
        ("train_loss", "Train loss", _loss, min),
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
    points = metric_points(engine, jobs)
    public = [JobPublic.from_job(job) for job in jobs]
    return templates.TemplateResponse(
        request,
        "compare.html",
        {
            "problem": None,
            "jobs": public,
            "charts": draw_charts([(f"#{job.id} {job.name}", points[job.id]) for job in jobs]),
            "rows": _compare_rows(public),
            "finals": _final_rows(public),
        },
    )


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def worker_rows(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "slots": worker.slots,
            "started_at": as_utc(worker.started_at),
            "heartbeat_at": as_utc(worker.heartbeat_at),
            "alive": queue.worker_alive(worker, settings.lease_seconds, now),
        }
        for worker in queue.list_workers(engine)
    ]


def render_workers(request: Request, workers: list[dict[str, Any]]) -> HTMLResponse:
    return templates.TemplateResponse(request, "workers.html", {"workers": workers})
