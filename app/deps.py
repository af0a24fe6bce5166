"""Request dependencies shared by the JSON API and the pages, and content negotiation: which of
the two answers a request for a URL they share."""

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from app import queue, users
from app.db import get_engine
from app.models import Job
from app.settings import Settings


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
