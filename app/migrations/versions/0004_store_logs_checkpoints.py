"""the shared store: logs and examples in the database, checkpoints, resume and pause

Revision ID: 0004
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# 64-bit on PostgreSQL as jobs.id is (0002a); SQLite's INTEGER is 64-bit already.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite takes them in place, where a batch copy of `jobs` would cascade
    # the deletion of its old table to every row that references a job.
    op.add_column('jobs', sa.Column('pause_requested', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('jobs', sa.Column('checkpoint', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('resumed_from_epoch', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('resumed_from_batch', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('host', sa.String(length=255), nullable=True))
    op.add_column('jobs', sa.Column('wandb_attempts', sa.JSON(), nullable=False, server_default='[]'))
    op.add_column('workers', sa.Column('store', sa.String(length=1024), nullable=True))
    op.create_table('job_logs',
    sa.Column('id', ROW_ID, nullable=False),
    sa.Column('job_id', ROW_ID, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_job_logs_job_attempt_offset', 'job_logs', ['job_id', 'attempt', 'offset'], unique=False)
    op.create_table('job_examples',
    sa.Column('job_id', ROW_ID, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('caption', sa.String(length=256), nullable=False),
    sa.Column('png', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'position')
    )


def downgrade() -> None:
    op.drop_table('job_examples')
    op.drop_index('ix_job_logs_job_attempt_offset', table_name='job_logs')
    op.drop_table('job_logs')
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('store')
    with op.batch_alter_table('jobs') as batch:
        for column in ('wandb_attempts', 'host', 'resumed_from_batch', 'resumed_from_epoch', 'checkpoint', 'pause_requested'):
            batch.drop_column(column)
