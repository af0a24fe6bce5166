"""jobs.notes (free text a person writes on a job) and deleted_jobs (what /metrics keeps of a deleted job)

Revision ID: 0003
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002b'
branch_labels = None
depends_on = None

# 64-bit on PostgreSQL as jobs.id is (0002a); SQLite's INTEGER is 64-bit already.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('notes', sa.Text(), nullable=True))

    op.create_table('deleted_jobs',
    sa.Column('id', ROW_ID, autoincrement=False, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('deleted_jobs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('notes')
