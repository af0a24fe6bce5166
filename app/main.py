"""The FastAPI application: routes, static files, migrations at start-up."""

import difflib
import math
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from app import api, inputs, metrics, pages, recipes, security, sweepconfig
from app.deps import query_names
from app.templating import STATIC_DIR, SWAGGER_UI_ASSETS, templates
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
        docs_url=None,  # app/pages.py serves /docs from the app's own copy of Swagger UI
        redoc_url=None,
        dependencies=[Depends(inputs.refuse_nul)],
    )
    app.state.settings = settings = settings or get_settings()
    app.state.login_throttle = security.LoginThrottle()
    app.exception_handler(RequestValidationError)(validation_error)
    for refusal in api.REFUSALS:
        app.exception_handler(refusal)(api.refusal)
    app.mount("/static/swagger-ui", StaticFiles(packages=[SWAGGER_UI_ASSETS]), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.middleware("http")(security.guard)
    app.add_middleware(security.BodyLimit, timeout=settings.body_timeout_seconds)
    templates.env.globals["csrf_token"] = security.csrf_token
    app.include_router(security.router)
    app.include_router(pages.router)
    app.include_router(pages.shared_router)  # before the API's: browsers get the page at a shared URL
    app.include_router(api.router)
    app.include_router(metrics.router)
    _document_schemas(app)
    return app


def _document_schemas(app: FastAPI) -> None:
    """Add to the OpenAPI document the schemas of bodies that routes read themselves (a sweep
    config, a job's fields by recipe)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(sweepconfig.json_schemas())
            schemas.update(recipes.json_schemas(recipes.registry()))
            # POST /jobs reads a plain object and validates it by its recipe: say which objects.
            body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = {"$ref": "#/components/schemas/JobRequest"}
        return app.openapi_schema

    app.openapi = openapi


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, plus each error's field name and a one-line message naming it, with a
    hint where one helps: the field an unknown one most likely meant, where a body stops being JSON."""
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        error["field"] = ".".join(location) or None
        if error["type"] == "json_invalid":
            error["field"] = None  # its location is a character offset, not a field
            error["msg"] = _not_json(exc.body, error)
        elif error["type"] == "extra_forbidden" and (meant := _meant(request, error["loc"])):
            error["msg"] += f"; did you mean `{meant}`?"
    message = "; ".join(f"{e['field']}: {e['msg']}" if e["field"] else e["msg"] for e in errors)
    content = _json_safe({"detail": errors, "message": message})
    return JSONResponse(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _not_json(document: Any, error: dict[str, Any]) -> str:
    """The JSON parser's reason, at a line and column of the body rather than a character offset."""
    reason = f"the body is not valid JSON: {error.get('ctx', {}).get('error', 'it does not parse')}"
    offset = error["loc"][-1]
    if not isinstance(document, str) or not isinstance(offset, int):
        return reason
    line = document.count("\n", 0, offset) + 1
    column = offset - document.rfind("\n", 0, offset)
    return f"{reason} at line {line} column {column}"


def _meant(request: Request, location: list[Any]) -> str | None:
    """The field or query parameter of this route that an unknown one most likely meant."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or len(location) != 2:
        return None
    where, given = location
    if where == "query":
        return _closest_name(str(given), query_names(route))
    model = getattr(request.state, "body_model", None) or (route.body_field.field_info.annotation if route.body_field else None)
    if where == "body" and isinstance(model, type) and issubclass(model, BaseModel):
        return _closest_name(str(given), list(model.model_fields))
    return None


def _closest_name(given: str, names: list[str]) -> str | None:
    """A near spelling (batchsize: batch_size, stauts: status), or the name a spelt-out one's
    initials make (learning_rate: lr)."""
    spelt = given.lower().replace("-", "_")
    initials = "".join(word[0] for word in spelt.split("_") if word)
    if "_" in spelt and initials in names:
        return initials
    close = difflib.get_close_matches(spelt, names, n=1, cutoff=0.6)
    return close[0] if close else None


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
