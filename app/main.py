"""The FastAPI application: routes, static files, migrations at start-up."""

import math
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app import api, inputs, metrics, pages, security
from app.templating import STATIC_DIR, templates
from app.db import get_engine, migrate
from app.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI):
    migrate(get_engine(app.state.settings.database_url))
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="trainboard",
        summary="Submit CIFAR-10 / ResNet-18 training jobs; workers train them with W&B logging.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(inputs.refuse_nul)],
    )
    app.state.settings = settings or get_settings()
    app.exception_handler(RequestValidationError)(validation_error)
    for refusal in api.QUEUE_REFUSALS:
        app.exception_handler(refusal)(api.queue_refusal)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.middleware("http")(security.guard)
    app.add_middleware(security.BodyLimit)
    templates.env.globals["csrf_token"] = security.csrf_token
    app.include_router(security.router)
    app.include_router(pages.router)
    app.include_router(pages.shared_router)  # before the API's: browsers get the page at a shared URL
    app.include_router(api.router)
    app.include_router(metrics.router)
    return app


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, plus each error's field name and a one-line message naming it."""
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        error["field"] = ".".join(location) or None
    message = "; ".join(f"{e['field']}: {e['msg']}" if e["field"] else e["msg"] for e in errors)
    content = _json_safe({"detail": errors, "message": message})
    return JSONResponse(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _json_safe(value: Any) -> Any:
    """What a refused request sent, made encodable: NaN and infinities (JSON bodies may spell them,
    and 1e400 is one) as text, lone surrogates ("\\ud800") replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
