"""Database engine, connection settings and schema migrations (Alembic, run at start-up)."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30000


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        # A dead network must fail a call in seconds, not hang it for minutes: a worker that
        # cannot renew its lease has to notice before the lease runs out (worker/supervisor.py).
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=5,
            connect_args={
                "connect_timeout": 5, "tcp_user_timeout": 5000,
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
            },
        )

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event decide how each transaction starts (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection):
        # Writers that read before they write (the claim) ask for BEGIN IMMEDIATE, so they take
        # the write lock up front instead of failing on a stale snapshot.
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine


@cache  # one engine per URL for the process: an evicted engine would leave its pool to the garbage collector
def get_engine(database_url: str) -> Engine:
    return make_engine(database_url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def _migration_lock(engine: Engine, connection) -> Iterator[None]:
    """Only one process upgrades the schema at a time (app and workers may start together)."""
    if is_sqlite(engine):
        database = engine.url.database or ""
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    else:
        connection.execute(text("SELECT pg_advisory_lock(7240521)"))
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(7240521)"))
            connection.commit()


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision; existing jobs are kept."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        with _migration_lock(engine, connection):
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
