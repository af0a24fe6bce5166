"""The FastAPI application: routes, static files, migrations at start-up."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app import api, metrics, pages, security
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
    return app


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, plus each error's field name and a one-line message naming it."""
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        error["field"] = ".".join(location) or None
    message = "; ".join(f"{e['field']}: {e['msg']}" if e["field"] else e["msg"] for e in errors)
    return JSONResponse({"detail": errors, "message": message}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
