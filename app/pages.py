"""HTML pages: the job list (and the fragment of it that updates live), the new-job form, a job's
page (and its live fragment, its buttons and its edit form), the comparison of jobs, the sweeps
(their list, their form, a sweep's page and its live fragment), the workers, and the API's
documentation.

Routes only: the reads are app/reads.py's, the form's fields app/forms.py's, the values' wording
app/formatting.py's and the charts app/charts.py's. Pages at URLs the JSON API shares are
`PageRoute`s: they answer browsers, and every other request falls through to the API.
"""

from dataclasses import dataclass, replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.datastructures import FormData, UploadFile

from app import charts, forms, queue, reads, recipes, sweeps, users
from app.deps import (
    MAX_JOB_ID, CurrentUser, EngineDep, JobId, JobToCancel, JobToDelete, JobToEdit, JobToPause, JobToResume, JobToRetry, PageRoute, SettingsDep,
    SweepId, sweep_document, validated_sweep,
)
from app.formatting import loss, param_value, percent, progress_view
from app.inputs import whole_number
from app.models import (
    ACTIVE_STATUSES, FINISHED_STATUSES, MAX_NOTES, STATUSES, TRAIN_IMAGES, Job, JobPublic, JobStatus, JobUpdate, Sweep,
    SweepStatus, SweepSummary, UserName, utcnow,
)
from app.settings import Settings
from app.sweepconfig import SweepConfigError, to_yaml
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
    engine: Engine,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = 200,
    clone_of: Job | None = None,
    missing_clone: int | None = None,
    refusal: str | None = None,
    recipe: recipes.Recipe = recipes.TUTORIAL,
) -> HTMLResponse:
    context = {
        "refusal": refusal,
        "recipe": recipe,
        "recipes": list(recipes.registry().recipes.values()),
        "groups": forms.form_groups(recipe),
        # The summary under the form works out a run's size and time from these as values change.
        "train_images": TRAIN_IMAGES,
        "speeds": reads.training_speeds(engine),
        "presets": forms.form_presets(recipe),
        "preset_help": forms.preset_help(recipe),
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
    recipe_name: Annotated[str | None, Query(alias="recipe", max_length=64)] = None,
) -> HTMLResponse:
    if clone is None:
        try:
            recipe = recipes.registry().get(recipe_name or recipes.TUTORIAL.name)
        except recipes.UnknownRecipe as exc:
            return _render_form(request, engine, forms.default_values(), {}, status.HTTP_404_NOT_FOUND, refusal=str(exc))
        values = forms.form_presets(recipe).get(preset or "") or forms.default_values(recipe)
        return _render_form(request, engine, values, {}, recipe=recipe)
    try:
        original = queue.get_job(engine, clone)
    except queue.JobNotFound:
        return _render_form(request, engine, forms.default_values(), {}, status.HTTP_404_NOT_FOUND, missing_clone=clone)
    try:
        recipe = recipes.registry().get(original.recipe)
    except recipes.UnknownRecipe as exc:
        return _render_form(
            request, engine, forms.default_values(), {}, status.HTTP_409_CONFLICT, refusal=f"cannot clone job {clone}: {exc}",
        )
    # The clone gets a name of its own; two runs with one name are confusing in W&B.
    values = forms.form_values({**original.params, "name": None}, recipe)
    return _render_form(request, engine, values, {}, clone_of=original, recipe=recipe)


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job_form(request: Request, engine: EngineDep, settings: SettingsDep, user: CurrentUser):
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        recipe = recipes.registry().get(form.get("recipe") or recipes.TUTORIAL.name)
    except recipes.UnknownRecipe as exc:
        return _render_form(request, engine, forms.default_values(), {}, status.HTTP_422_UNPROCESSABLE_CONTENT, refusal=str(exc))
    try:
        params = recipe.validate(forms.parse_form(form, recipe))
    except ValidationError as exc:
        errors = forms.field_errors(exc)
        return _render_form(
            request, engine, forms.submitted_values(form, recipe), errors, status.HTTP_422_UNPROCESSABLE_CONTENT, recipe=recipe,
        )
    try:
        job = queue.submit(
            engine, params, default_wandb_mode=settings.wandb_mode,
            max_attempts=settings.max_attempts, max_queued=settings.max_queued, owner=user.name, recipe=recipe,
        )
    except queue.QueueFull as exc:
        return _render_form(
            request, engine, forms.submitted_values(form, recipe), {}, status.HTTP_429_TOO_MANY_REQUESTS, refusal=str(exc),
            recipe=recipe,
        )
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# The list
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """What the list shows: `/`, its live fragment `/live` and a browser's `/jobs` take the same
    query parameters."""

    status_filter: JobStatus | None
    search: str | None
    limit: int
    offset: int
    owner: str | None = None

    def link(self, **changes: Any) -> str:
        """The list's URL for this query with some parts changed (another page, status or owner)."""
        query = replace(self, **changes)
        parameters = {
            "status": query.status_filter, "owner": query.owner, "q": query.search,
            "offset": query.offset or None, "limit": query.limit if query.limit != 50 else None,
        }
        encoded = urlencode({key: value for key, value in parameters.items() if value})
        return "/?" + encoded if encoded else "/"


def list_query(
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    owner: Annotated[UserName | None, Query()] = None,
    search: Annotated[str | None, Query(alias="q", max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ListQuery:
    known = JobStatus(status_filter) if status_filter in STATUSES else None
    return ListQuery(known, (search or "").strip() or None, limit, offset, owner)


ListQueryDep = Annotated[ListQuery, Depends(list_query)]


@router.get("/", response_class=HTMLResponse)
def index(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    return _render_index(request, engine, query)


@shared_router.get("/jobs", response_class=HTMLResponse)
def jobs_index(
    request: Request,
    engine: EngineDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    owner: Annotated[UserName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    """A browser's `GET /jobs`: the list, with the JSON API's query parameters."""
    return _render_index(request, engine, ListQuery(status_filter, None, limit, offset, owner))


@router.get("/live", response_class=HTMLResponse)
def index_live_fragment(request: Request, engine: EngineDep, query: ListQueryDep) -> HTMLResponse:
    """The part of the list that changes (counts, rows, pages) for the same query as `/`; the
    list's script polls it and swaps it in."""
    response = _render_index(request, engine, query, template="index_live.html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _render_index(request: Request, engine: Engine, query: ListQuery, *, template: str = "index.html") -> HTMLResponse:
    status_filter, search, limit, offset, owner = query.status_filter, query.search, query.limit, query.offset, query.owner
    listing = reads.list_jobs(engine, status=status_filter, search=search, owner=owner, limit=limit, offset=offset)
    jobs = [JobPublic.from_job(job) for job in listing.jobs]
    total = listing.total
    title = "trainboard"
    if search or status_filter or owner:
        matching = f" matching “{search}”" if search else ""
        title = f"{total} {status_filter + ' ' if status_filter else ''}jobs{f' of {owner}' if owner else ''}{matching} · trainboard"
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
            "owner": owner,
            "me": request.state.user.name if request.state.signed_in else None,
            "statuses": STATUSES,
            "columns": LIST_COLUMNS,
            "newer": query.link(offset=max(offset - limit, 0)) if offset > 0 else None,
            "older": query.link(offset=offset + limit) if offset + limit < total else None,
            "status_link": lambda s: query.link(status_filter=s, offset=0),
            "owner_link": lambda o: query.link(owner=o, offset=0),
            "clear_search": query.link(search=None, offset=0),
            "title": title,
            "live_src": "/live" + query.link().removeprefix("/"),
            "live_interval": LIST_LIVE_INTERVAL_MS,
            "compare_max": COMPARE_MAX,
        },
    )


# ---------------------------------------------------------------------------------------------
# A job: its page, the fragment the page polls while the job is queued or running, its buttons
# ---------------------------------------------------------------------------------------------


def _job_context(
    engine: Engine, settings: Settings, job: Job, user: users.Caller, edit: dict[str, str] | None = None,
    edit_errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    [public] = reads.job_views(engine, [job], settings.lease_seconds)
    points = reads.metric_points(engine, [job])[job.id]
    recipe = _recipe_of(job)
    log, _ = reads.read_log(engine, settings, job.id, None, LOG_TAIL_BYTES)
    if len(log) >= LOG_TAIL_BYTES and "\n" in log:
        log = log.split("\n", 1)[1]
    return {
        "job": public,
        "sweep": sweeps.get(engine, job.sweep_id) if job.sweep_id is not None else None,
        "may_change": users.may_change(user, job),
        "active": job.status in ACTIVE_STATUSES,
        "progress": progress_view(public),
        "epochs": [values for _, values in points["epoch"]],
        "recipe": recipe,
        "charts": charts.draw_charts([(job.name, points)], [recipe]),
        "examples": reads.read_examples(engine, settings, job.id),
        "log": log,
        "live_interval": LIVE_INTERVAL_MS,
        "edit": edit or forms.edit_values(job),
        "edit_errors": edit_errors or {},
        "max_notes": MAX_NOTES,
    }


@shared_router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: JobId, request: Request, engine: EngineDep, settings: SettingsDep, user: CurrentUser) -> HTMLResponse:
    job = queue.get_job(engine, job_id)
    return templates.TemplateResponse(request, "job.html", _job_context(engine, settings, job, user))


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live_fragment(
    job_id: JobId, request: Request, engine: EngineDep, settings: SettingsDep, user: CurrentUser
) -> HTMLResponse:
    """The parts of a job's page that change while it runs; the page's script swaps them in."""
    try:
        job = queue.get_job(engine, job_id)
    except queue.JobNotFound as exc:
        return HTMLResponse(f"<p>{exc}</p>", status_code=status.HTTP_404_NOT_FOUND)
    response = templates.TemplateResponse(request, "job_live.html", _job_context(engine, settings, job, user))
    response.headers["Cache-Control"] = "no-store"
    return response


@shared_router.post("/jobs/{job_id}/cancel")
def cancel_button(job: JobToCancel, engine: EngineDep) -> RedirectResponse:
    queue.request_cancel(engine, job.id)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


@shared_router.post("/jobs/{job_id}/pause")
def pause_button(job: JobToPause, engine: EngineDep) -> RedirectResponse:
    queue.request_pause(engine, job.id)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


@shared_router.post("/jobs/{job_id}/resume")
def resume_button(job: JobToResume, engine: EngineDep) -> RedirectResponse:
    queue.request_resume(engine, job.id)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


@shared_router.post("/jobs/{job_id}/retry")
def retry_button(original: JobToRetry, user: CurrentUser, engine: EngineDep, settings: SettingsDep) -> RedirectResponse:
    job = sweeps.retry(engine, settings, original, owner=user.name)
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/jobs/{job_id}/delete")
def delete_button(job: JobToDelete, engine: EngineDep, settings: SettingsDep) -> RedirectResponse:
    """The page's Delete (after its confirmation): DELETE /jobs/{id} for a browser's form."""
    queue.delete_job(engine, job.id, settings)
    return RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/jobs/{job_id}/edit", response_class=HTMLResponse)
async def edit_form(job: JobToEdit, request: Request, engine: EngineDep, settings: SettingsDep, user: CurrentUser):
    """The page's edit form (PATCH /jobs/{id} for a browser): a bad value shows the page again,
    the message beside its field and what was typed kept."""
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        changes = JobUpdate.model_validate(forms.parse_edit(form))
    except ValidationError as exc:
        context = _job_context(
            engine, settings, job, user, edit={name: form.get(name, "") for name in forms.EDIT_FIELDS},
            edit_errors=forms.field_errors(exc),
        )
        return templates.TemplateResponse(request, "job.html", context, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    queue.update_job(engine, job.id, changes)
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


def _recipe_of(job: Job | JobPublic) -> recipes.Recipe:
    """The job's recipe as this process has it; one not installed here is drawn as the
    tutorial's metrics would be, with whatever its points hold."""
    return recipes.registry().recipes.get(job.recipe, recipes.TUTORIAL)


def _compare_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(key for job in jobs for key in job.params))
    trained = [f"{job.recipe} {job.recipe_version or ''}".strip() for job in jobs]
    rows = [{"name": "recipe", "values": trained, "differs": len(set(trained)) > 1}]
    for name in names:
        values = [param_value(job.params.get(name)) for job in jobs]
        if name != "name":
            rows.append({"name": name, "values": values, "differs": len(set(values)) > 1})
    return rows


def _final_rows(jobs: list[JobPublic]) -> list[dict[str, Any]]:
    rows = []
    finals = [
        ("test_accuracy", "Test Accuracy", percent, max),
        ("test_loss", "Test Loss", loss, min),
        ("train_loss", "Train loss", loss, min),
        ("train_images_per_second", "Train images/s", lambda v: f"{v:,.0f}", max),
    ]
    # Other recipes' metrics, as they declare them.
    known = recipes.registry().recipes
    for metric in (m for name in dict.fromkeys(job.recipe for job in jobs) if name in known for m in known[name].metrics):
        if metric.name not in [key for key, *_ in finals]:
            finals.append((metric.name, metric.logged_as, lambda v: f"{v:.4g}", max if metric.goal == "maximize" else min))
    for key, label, fmt, best in finals:
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
            "charts": charts.draw_charts(
                [(f"#{job.id} {job.name}", points[job.id]) for job in jobs], list(dict.fromkeys(map(_recipe_of, jobs))),
            ),
            "rows": _compare_rows(public),
            "finals": _final_rows(public),
        },
    )


# ---------------------------------------------------------------------------------------------
# Sweeps: the list, the form, a sweep's page (and the fragment it polls while running), its Cancel
# ---------------------------------------------------------------------------------------------

# A sweep's page redraws every trial's chart: a slower pace than a job's page suits it.
SWEEP_LIVE_INTERVAL_MS = 5000
# Where the form starts: a W&B sweep config to edit.
EXAMPLE_SWEEP = """\
name: lr-search
method: random
metric:
  name: test_accuracy
  goal: maximize
run_cap: 8
parallel: 2
parameters:
  lr:
    distribution: log_uniform_values
    min: 0.001
    max: 0.1
  batch_size:
    values: [64, 128]
  epochs:
    value: 5
early_terminate:
  type: hyperband
  min_iter: 1
  eta: 3
"""


def _trials_done(sweep: SweepSummary) -> int:
    return sum(sweep.counts.get(state, 0) for state in FINISHED_STATUSES)


@shared_router.get("/sweeps", response_class=HTMLResponse)
def sweeps_index(
    request: Request,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    """A browser's `GET /sweeps`: the sweeps, newest first, with their progress and best trial."""
    items, total = sweeps.list_sweeps(engine, limit=limit, offset=offset)

    def link(at: int) -> str:
        return "/sweeps?" + urlencode({"offset": at, **({"limit": limit} if limit != 50 else {})})

    return templates.TemplateResponse(request, "sweeps.html", {
        "sweeps": items,
        "done": _trials_done,
        "total": total,
        "offset": offset,
        "newer": link(max(offset - limit, 0)) if offset > 0 else None,
        "older": link(offset + limit) if offset + limit < total else None,
    })


def _render_sweep_form(
    request: Request, config: str, errors: list[dict[str, str | None]], status_code: int = 200,
    source: Sweep | None = None, missing_source: int | None = None,
) -> HTMLResponse:
    context = {"config": config, "errors": errors, "source": source, "missing_source": missing_source}
    return templates.TemplateResponse(request, "sweep_new.html", context, status_code=status_code)


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep_form(
    request: Request, engine: EngineDep, source: Annotated[int | None, Query(alias="from", ge=1, le=MAX_JOB_ID)] = None,
) -> HTMLResponse:
    """The form, with an example config, or with `?from=ID` that sweep's."""
    if source is None:
        return _render_sweep_form(request, EXAMPLE_SWEEP, [])
    try:
        original = sweeps.get(engine, source)
    except sweeps.SweepNotFound:
        return _render_sweep_form(request, EXAMPLE_SWEEP, [], status.HTTP_404_NOT_FOUND, missing_source=source)
    # The new sweep gets a name of its own: the name is its trials' W&B group.
    config = {key: value for key, value in original.config.items() if key != "name"}
    return _render_sweep_form(request, to_yaml(config), [], source=original)


async def _submitted_config(form: FormData) -> tuple[str, str | None]:
    """The config the form sent: the chosen file's text, or else the text area's; and what is
    wrong with it before it parses, if anything."""
    typed = form.get("config")
    text = typed if isinstance(typed, str) else ""
    upload = form.get("config_file")
    if isinstance(upload, UploadFile) and upload.filename:
        content = await upload.read()
        if content.strip():
            try:
                return content.decode("utf-8"), None
            except UnicodeDecodeError:
                return text, f"{upload.filename} is not UTF-8 text; choose the YAML or JSON file of a sweep config."
    if not text.strip():
        return text, "The config is empty: write one in the text area, or choose its file."
    return text, None


def _sweep_document(text: str) -> Any:
    """The form's config parsed: as JSON when it is JSON, else as YAML (where JSON's 1e-3 would be
    a string)."""
    try:
        return sweep_document(text, yaml=False)
    except SweepConfigError:
        return sweep_document(text, yaml=True)


def _config_errors(errors: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    """Each problem with the key it is at (`parameters.lr.min`), or none for the whole config."""
    return [{"key": ".".join(str(part) for part in error["loc"]) or None, "message": error["msg"]} for error in errors]


@router.post("/sweeps/new", response_class=HTMLResponse)
async def submit_sweep_form(request: Request, engine: EngineDep, settings: SettingsDep, user: CurrentUser):
    """Start the sweep and show its page; a config that does not hold shows the form again, with
    what is wrong beside it and the config kept."""
    async with request.form() as form:
        text, problem = await _submitted_config(form)
    if problem is not None:
        return _render_sweep_form(request, text, [{"key": None, "message": problem}], status.HTTP_422_UNPROCESSABLE_CONTENT)
    try:
        checked = validated_sweep(_sweep_document(text), where=())
    except SweepConfigError as exc:
        return _render_sweep_form(request, text, _config_errors(exc.errors), status.HTTP_422_UNPROCESSABLE_CONTENT)
    except RequestValidationError as exc:
        return _render_sweep_form(request, text, _config_errors(list(exc.errors())), status.HTTP_422_UNPROCESSABLE_CONTENT)
    sweep = sweeps.create(engine, settings, checked.plan, checked.document, owner=user.name)
    return RedirectResponse(f"/sweeps/{sweep.id}", status_code=status.HTTP_303_SEE_OTHER)


def _sweep_context(engine: Engine, sweep_id: int, user: users.Caller, refusal: str | None = None) -> dict[str, Any]:
    sweep = sweeps.sweep_view(engine, sweep_id)
    curves = sweeps.metric_curves(engine, sweep_id)
    parameters = sweep.config.get("parameters") or {}
    return {
        "sweep": sweep,
        "active": sweep.status == SweepStatus.RUNNING,
        "may_change": users.may_change(user, sweep),
        "done": _trials_done(sweep),
        "best": next((trial for trial in sweep.jobs if trial.id == sweep.best_job_id), None),
        "swept": list(dict.fromkeys(name for trial in sweep.jobs for name in trial.params)),
        "metric_chart": charts.sweep_metric_chart(sweep.jobs, curves, sweep.metric),
        "parameter_charts": charts.parameter_charts(sweep.jobs, parameters, sweep.metric, sweep.best_job_id),
        "chart_lines": charts.MAX_TRIAL_LINES,
        "config_yaml": to_yaml(sweep.config),
        "refusal": refusal,
        "live_interval": SWEEP_LIVE_INTERVAL_MS,
    }


@shared_router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: SweepId, request: Request, engine: EngineDep, user: CurrentUser) -> HTMLResponse:
    return templates.TemplateResponse(request, "sweep.html", _sweep_context(engine, sweep_id, user))


@router.get("/sweeps/{sweep_id}/live", response_class=HTMLResponse)
def sweep_live_fragment(sweep_id: SweepId, request: Request, engine: EngineDep, user: CurrentUser) -> HTMLResponse:
    """The parts of a sweep's page that change while it runs; the page's script swaps them in."""
    try:
        context = _sweep_context(engine, sweep_id, user)
    except sweeps.SweepNotFound as exc:
        return HTMLResponse(f"<p>{exc}</p>", status_code=status.HTTP_404_NOT_FOUND)
    response = templates.TemplateResponse(request, "sweep_live.html", context)
    response.headers["Cache-Control"] = "no-store"
    return response


@shared_router.post("/sweeps/{sweep_id}/cancel", response_class=HTMLResponse)
def cancel_sweep_button(sweep_id: SweepId, request: Request, engine: EngineDep, user: CurrentUser):
    """The page's Cancel: the sweep's page again, or with 409 and why for a sweep that has ended."""
    users.authorize(user, sweeps.get(engine, sweep_id), "cancel")
    try:
        sweeps.cancel(engine, sweep_id)
    except sweeps.SweepStateConflict as exc:
        context = _sweep_context(engine, sweep_id, user, refusal=str(exc))
        return templates.TemplateResponse(request, "sweep.html", context, status_code=status.HTTP_409_CONFLICT)
    return RedirectResponse(f"/sweeps/{sweep_id}", status_code=status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


@shared_router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    workers = reads.worker_views(engine, settings.lease_seconds, utcnow())
    return templates.TemplateResponse(request, "workers.html", {"workers": workers})


# ---------------------------------------------------------------------------------------------
# The API's documentation
# ---------------------------------------------------------------------------------------------


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI from the app's own copy (no CDN), started by /static/docs.js (no inline script)."""
    return templates.TemplateResponse(request, "docs.html", {"openapi_url": request.app.openapi_url})
