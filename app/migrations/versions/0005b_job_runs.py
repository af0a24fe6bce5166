"""jobs.runs: where each attempt trained ([{"attempt", "worker", "host", "device"}])

Revision ID: 0005b
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005b'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, as in 0004: a batch copy of `jobs` on SQLite would cascade deletes.
    op.add_column('jobs', sa.Column('runs', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('runs')
