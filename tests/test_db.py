"""Schema migrations (app/db.py) on both databases: upgrading keeps existing jobs and their points."""

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from app import queue
from app.db import MIGRATIONS_DIR, make_engine, migrate


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
