"""Request dependencies shared by the JSON API and the pages."""

from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy import Engine

from app.db import get_engine
from app.settings import Settings


def settings_dependency(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(settings_dependency)]


def engine_dependency(settings: SettingsDep) -> Engine:
    return get_engine(settings.database_url)


EngineDep = Annotated[Engine, Depends(engine_dependency)]


def wants_html(request: Request) -> bool:
    """Browsers ask for text/html first; scripts and curl don't. A browser always gets a page."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept


# Ids fit a signed 64-bit column on every database; a larger one is simply not found.
MAX_JOB_ID = 2**63 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="The job's id")]
