"""Schema migrations (app/db.py's migrate) on SQLite and PostgreSQL: an older schema with rows in it
is upgraded without losing them, and the upgraded schema is the one the models describe."""

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from app import queue, reads
from app.db import MIGRATIONS_DIR, make_engine, migrate
from app.models import JobCreate


@pytest.fixture
def bare_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def upgrade_to(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def test_upgrading_from_the_first_schema_keeps_jobs_and_their_points(database_url):
    engine = make_engine(database_url)
    try:
        upgrade_to(engine, "0001")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO jobs (id, name, status, params, progress, metrics, artifacts, attempts, max_attempts,"
                " cancel_requested, created_at) VALUES (1, 'old', 'succeeded', '{\"tags\": [\"kept\"]}', '{}',"
                " '{\"test_accuracy\": 91.5}', '[]', 1, 3, false, '2024-05-01 10:00:00')"
            ))
            connection.execute(text(
                "INSERT INTO job_metrics (job_id, attempt, kind, step, \"values\") VALUES (1, 1, 'epoch', 1, '{}')"
            ))
        migrate(engine)
        job = queue.get_job(engine, 1)
        assert (job.name, job.params["tags"], job.metrics, job.notes) == ("old", ["kept"], {"test_accuracy": 91.5}, None)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM job_metrics WHERE job_id = 1")).scalar() == 1
            assert connection.execute(text("SELECT count(*) FROM deleted_jobs")).scalar() == 0
    finally:
        engine.dispose()


def test_the_initial_schema_upgrades_with_its_rows_to_64_bit_ids(bare_engine: Engine):
    upgrade_to(bare_engine, "0001")
    with bare_engine.begin() as connection:
        old_id = connection.scalar(text(
            "INSERT INTO jobs (name, status, params, progress, metrics, artifacts, attempts, max_attempts,"
            " cancel_requested, created_at) VALUES ('old', 'failed', '{}', '{}', '{}', '[]', 1, 3, false, CURRENT_TIMESTAMP)"
            " RETURNING id"
        ))
        connection.execute(text(
            "INSERT INTO job_metrics (job_id, attempt, kind, step, \"values\") VALUES (:job, 1, 'train', 10, '{\"train_loss\": 2.0}')"
        ), {"job": old_id})

    migrate(bare_engine)

    assert queue.get_job(bare_engine, old_id).name == "old"
    assert [point.values for point in reads.job_metrics(bare_engine, old_id)] == [{"train_loss": 2.0}]
    assert queue.submit(bare_engine, JobCreate(), default_wandb_mode="offline", max_attempts=1).id == old_id + 1
    if bare_engine.dialect.name == "postgresql":
        columns = {
            (table, column["name"]): str(column["type"])
            for table in ("jobs", "job_metrics") for column in inspect(bare_engine).get_columns(table)
        }
        for column in (("jobs", "id"), ("jobs", "retry_of"), ("job_metrics", "id"), ("job_metrics", "job_id")):
            assert columns[column] == "BIGINT", column
        with bare_engine.connect() as connection:
            assert connection.scalar(text("SELECT max_value FROM pg_sequences WHERE sequencename = 'jobs_id_seq'")) == 2**63 - 1


def test_the_migrated_schema_is_the_one_the_models_describe(bare_engine: Engine):
    migrate(bare_engine)
    with bare_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
