"""Request dependencies shared by the JSON API and the pages, and content negotiation: which of
the two answers a request for a URL they share."""

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from app import queue, recipes, users
from app.db import get_engine
from app.models import TUTORIAL_RECIPE, Job
from app.settings import Settings
from app.sweepconfig import SweepConfigError, SweepPlan, parse_yaml, plan


def settings_dependency(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(settings_dependency)]


def engine_dependency(settings: SettingsDep) -> Engine:
    return get_engine(settings.database_url)


EngineDep = Annotated[Engine, Depends(engine_dependency)]


def current_user(request: Request) -> users.Caller:
    """Who the request acts as (app/security.py's guard identified them; admin without sign-in)."""
    return request.state.user


CurrentUser = Annotated[users.Caller, Depends(current_user)]


def _accepts_html(headers: Headers) -> bool:
    return "text/html" in headers.get("accept", "")


def wants_html(request: Request) -> bool:
    """Browsers ask for text/html first; scripts and curl don't. A browser always gets a page."""
    return _accepts_html(request.headers)


class PageRoute(APIRoute):
    """A page at a URL the JSON API also serves (`/jobs/{id}`, `/workers`...): it matches only
    requests that want HTML, so every other request falls through to the API's route. The page
    router is included before the API's."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not _accepts_html(Headers(scope=scope)):
            return Match.NONE, {}
        return match, child_scope


# Ids fit a signed 64-bit column on every database; a larger one is simply not found.
MAX_JOB_ID = 2**63 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="The job's id")]
SweepId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="The sweep's id")]


class JobWrite:
    """The dependency of every route that changes a job: the job at {job_id} (404 when there is
    none), once users.authorize lets the caller do `action` to it (403 naming the owner otherwise).
    A new write route takes `job: Annotated[Job, Depends(JobWrite("pause"))]`."""

    def __init__(self, action: str):
        self.action = action

    def __call__(self, job_id: JobId, user: CurrentUser, engine: EngineDep) -> Job:
        job = queue.get_job(engine, job_id)
        users.authorize(user, job, self.action)
        return job


JobToCancel = Annotated[Job, Depends(JobWrite("cancel"))]
JobToRetry = Annotated[Job, Depends(JobWrite("retry"))]
JobToEdit = Annotated[Job, Depends(JobWrite("edit"))]
JobToDelete = Annotated[Job, Depends(JobWrite("delete"))]
JobToPause = Annotated[Job, Depends(JobWrite("pause"))]
JobToResume = Annotated[Job, Depends(JobWrite("resume"))]


def query_names(route: APIRoute) -> list[str]:
    """The query parameters a route takes, those of its dependencies included."""
    names: list[str] = []
    dependants = [route.dependant]
    while dependants:
        dependant = dependants.pop()
        names += [field.alias for field in dependant.query_params]
        dependants += dependant.dependencies
    return names


def refuse_unknown_query(request: Request) -> None:
    """422 naming each query parameter the route does not take: a misspelt filter (`?stauts=`)
    must not quietly answer with everything."""
    known = query_names(request.scope["route"])
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise RequestValidationError([
            {
                "type": "extra_forbidden", "loc": ("query", name), "input": request.query_params[name],
                "msg": f"Unknown query parameter (this takes {', '.join(known)})",
            }
            for name in unknown
        ])


# A route's `dependencies=[KnownQueryOnly]`: its query parameters, and no others.
KnownQueryOnly = Depends(refuse_unknown_query)


@dataclass(frozen=True)
class JobRequest:
    recipe: recipes.Recipe
    params: BaseModel  # the recipe's job model


def job_request(request: Request, body: Annotated[dict[str, Any] | None, Body()] = None) -> JobRequest:
    """POST /jobs's body: `recipe` (default the tutorial's) and that recipe's fields, flat (GET
    /recipes has each one's schema); a RequestValidationError naming each refused field."""
    data = dict(body or {})
    name = data.pop("recipe", TUTORIAL_RECIPE)
    try:
        recipe = recipes.registry().get(name) if isinstance(name, str) else None
    except recipes.UnknownRecipe as exc:
        recipe, reason = None, str(exc)
    else:
        reason = "must be a recipe's name (GET /recipes)"
    if recipe is None:
        raise RequestValidationError([{"type": "recipe", "loc": ("body", "recipe"), "msg": reason, "input": name}])
    request.state.body_model = recipe.job_model  # for the 422's "did you mean"
    try:
        return JobRequest(recipe, recipe.validate(data))
    except ValidationError as exc:
        raise RequestValidationError([
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]) from None


JobBody = Annotated[JobRequest, Depends(job_request)]


YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@dataclass(frozen=True)
class SweepRequest:
    plan: SweepPlan
    document: dict[str, Any]  # the config as sent, parsed


def sweep_document(text: str, yaml: bool) -> Any:
    """A sweep config's text, parsed as YAML or JSON; a 422 saying where it stops parsing."""
    if yaml:
        return parse_yaml(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SweepConfigError([{
            "type": "sweep_config", "loc": (), "input": None,
            "msg": f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        }]) from None


def validated_sweep(data: Any, where: tuple[str, ...] = ("body",)) -> SweepRequest:
    """A parsed config, checked: a RequestValidationError (the 422 every refused field gets) if not."""
    try:
        return SweepRequest(plan(data), data)
    except SweepConfigError as exc:
        raise _refused(exc, where) from None


def _refused(exc: SweepConfigError, where: tuple[str, ...]) -> RequestValidationError:
    return RequestValidationError([{**error, "loc": where + tuple(error["loc"])} for error in exc.errors])


async def sweep_config(request: Request) -> SweepRequest:
    """POST /sweeps's body: a W&B sweep config as JSON, or YAML by its Content-Type."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    yaml = content_type in YAML_TYPES
    if not yaml and content_type not in ("application/json", ""):
        raise HTTPException(415, f"send the sweep config as application/json or application/yaml, not {content_type}")
    try:
        data = sweep_document((await request.body()).decode("utf-8"), yaml)
    except UnicodeDecodeError:
        raise RequestValidationError([{"type": "utf8", "loc": ("body",), "msg": "the body is not UTF-8", "input": None}]) from None
    except SweepConfigError as exc:
        raise _refused(exc, ("body",)) from None
    return validated_sweep(data)


SweepConfigBody = Annotated[SweepRequest, Depends(sweep_config)]
