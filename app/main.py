"""The FastAPI application: routes, static files, migrations at start-up."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import api, pages
from app.db import get_engine, migrate
from app.settings import get_settings


@asynccontextmanager
async def lifespan(_app: FastAPI):
    migrate(get_engine(get_settings().database_url))
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="trainboard",
        summary="Submit CIFAR-10 / ResNet-18 training jobs; workers train them with W&B logging.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=pages.TEMPLATES_DIR / "static"), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    return app
