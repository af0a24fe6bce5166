"""HTML pages rendered on the server: the job list, the new-job form, a job's page, workers."""

from datetime import datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import Engine

from app import queue
from app.deps import EngineDep, SettingsDep
from app.models import STATUSES, Job, JobCreate, JobPublic, as_utc, utcnow
from app.settings import Settings

TEMPLATES_DIR = Path(str(files("templates")))
templates = Jinja2Templates(directory=TEMPLATES_DIR)
router = APIRouter(include_in_schema=False)

LIST_COLUMNS = ("lr", "batch_size", "epochs", "model", "dataset")
LOG_TAIL_BYTES = 20_000


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return _duration(utcnow() - as_utc(moment)) + " ago"


def _duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
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


templates.env.filters["age"] = _age
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


@lru_cache
def form_fields() -> list[dict[str, Any]]:
    schema = JobCreate.model_json_schema()
    fields = []
    for name, spec in schema["properties"].items():
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
                min=option.get("minimum", option.get("exclusiveMinimum")),
                max=option.get("maximum", option.get("exclusiveMaximum")),
                step="1" if kind == "integer" else "any",
            )
        elif kind == "array":
            field.update(kind="tags")
        else:
            field.update(kind="text", maxlength=option.get("maxLength"))
        fields.append(field)
    return fields


def _form_values(params: dict[str, Any]) -> dict[str, str]:
    values = {}
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
    for field in form_fields():
        raw = form.get(field["name"], "").strip()
        if field["kind"] == "checkbox":
            params[field["name"]] = bool(raw)
        elif field["kind"] == "tags":
            params[field["name"]] = [tag.strip() for tag in raw.split(",") if tag.strip()]
        elif raw:
            params[field["name"]] = raw
    return params


def _render_form(request: Request, values: dict[str, str], errors: dict[str, str], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "new.html", {"fields": form_fields(), "values": values, "errors": errors}, status_code=status_code
    )


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_form(request: Request, engine: EngineDep, clone: Annotated[int | None, Query()] = None) -> HTMLResponse:
    params: dict[str, Any] = {}
    if clone is not None:
        try:
            params = {**queue.get_job(engine, clone).params, "name": None}
        except queue.JobNotFound:
            params = {}
    return _render_form(request, _form_values(params), {})


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job_form(request: Request, engine: EngineDep, settings: SettingsDep):
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        params = JobCreate.model_validate(parse_form(form))
    except ValidationError as exc:
        errors = {str(error["loc"][0]): error["msg"] for error in exc.errors() if error["loc"]}
        values = {field["name"]: form.get(field["name"], "") for field in form_fields()}
        return _render_form(request, values, errors, status.HTTP_422_UNPROCESSABLE_CONTENT)
    job = queue.submit(engine, params, default_wandb_mode=settings.wandb_mode, max_attempts=settings.max_attempts)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# The list, a job, workers
# ---------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request,
    engine: EngineDep,
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    return render_index(request, engine, status_filter if status_filter in STATUSES else None, limit, offset)


def render_index(request: Request, engine: Engine, status_filter: str | None, limit: int, offset: int) -> HTMLResponse:
    jobs, total = queue.list_jobs(engine, status=status_filter, limit=limit, offset=offset)
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "jobs": [JobPublic.from_job(job) for job in jobs],
            "total": total,
            "limit": limit,
            "offset": offset,
            "status_filter": status_filter,
            "statuses": STATUSES,
            "columns": LIST_COLUMNS,
        },
    )


def render_job(request: Request, engine: Engine, settings: Settings, job: Job) -> HTMLResponse:
    epochs = [point.values for point in queue.job_metrics(engine, job.id, "epoch")]
    return templates.TemplateResponse(
        request,
        "job.html",
        {
            "job": JobPublic.from_job(job),
            "epochs": epochs,
            "log": read_tail(settings.job_dir(job.id) / "job.log", LOG_TAIL_BYTES),
        },
    )


def worker_rows(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    gone_after = timedelta(seconds=settings.lease_seconds)
    now = utcnow()
    return [
        {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "slots": worker.slots,
            "started_at": as_utc(worker.started_at),
            "heartbeat_at": as_utc(worker.heartbeat_at),
            "alive": worker.stopped_at is None and now - as_utc(worker.heartbeat_at) < gone_after,
        }
        for worker in queue.list_workers(engine)
    ]


def render_workers(request: Request, workers: list[dict[str, Any]]) -> HTMLResponse:
    return templates.TemplateResponse(request, "workers.html", {"workers": workers})
