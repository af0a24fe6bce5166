"""64-bit ids on PostgreSQL; job_metrics indexed by (job, attempt, kind, step)

Revision ID: 0002a
Revises: 0001

PostgreSQL: jobs.id, jobs.retry_of, job_metrics.id and job_metrics.job_id become BIGINT, and the
sequences that number new rows count to 2^63-1 (the API already takes ids that large). SQLite's
INTEGER is 64-bit already, so there only the index changes. Rewriting a large job_metrics table
takes a while on PostgreSQL; rows are kept.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002a'
down_revision = '0001'
branch_labels = None
depends_on = None

ID_COLUMNS = (("jobs", "id"), ("jobs", "retry_of"), ("job_metrics", "id"), ("job_metrics", "job_id"))
SEQUENCES = (("jobs", "id"), ("job_metrics", "id"))


def _set_id_type(id_type: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in ID_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {id_type}")
    for table, column in SEQUENCES:
        sequence = op.get_bind().scalar(sa.text(f"SELECT pg_get_serial_sequence('{table}', '{column}')"))
        op.execute(f"ALTER SEQUENCE {sequence} AS {id_type}")


def upgrade() -> None:
    _set_id_type("BIGINT")
    with op.batch_alter_table('job_metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_job_metrics_job_kind_step')
        batch_op.create_index('ix_job_metrics_job_attempt_kind_step', ['job_id', 'attempt', 'kind', 'step'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_job_metrics_job_attempt_kind_step')
        batch_op.create_index('ix_job_metrics_job_kind_step', ['job_id', 'kind', 'step'], unique=False)
    _set_id_type("INTEGER")
