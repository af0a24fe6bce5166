"""sweeps, and jobs as their trials: sweep_id, trial_number, trial, pruned

Revision ID: 0006
Revises: 0005b
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005b'
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'sweeps',
        sa.Column('id', RowId, primary_key=True),
        sa.Column('name', sa.String(128), nullable=False),
        sa.Column('owner', sa.String(64), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('method', sa.String(16), nullable=False),
        sa.Column('metric', sa.String(32), nullable=False),
        sa.Column('goal', sa.String(16), nullable=False),
        sa.Column('run_cap', sa.Integer(), nullable=False),
        sa.Column('parallel', sa.Integer(), nullable=False),
        sa.Column('seed', sa.BigInteger(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('reason', sa.String(1024), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_sweeps_status', 'sweeps', ['status'])
    # Plain ADD COLUMNs, as in 0004: a batch copy of `jobs` on SQLite would cascade deletes.
    if op.get_bind().dialect.name == 'sqlite':
        # SQLite adds a column's foreign key only inline, which Alembic's add_column does not write.
        op.execute('ALTER TABLE jobs ADD COLUMN sweep_id INTEGER REFERENCES sweeps (id)')
    else:
        op.add_column('jobs', sa.Column('sweep_id', RowId, sa.ForeignKey('sweeps.id'), nullable=True))
    op.add_column('jobs', sa.Column('trial_number', sa.Integer(), nullable=True))
    op.add_column('jobs', sa.Column('trial', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('pruned', sa.JSON(), nullable=True))
    # A trial's number is given out once per sweep; its retries (retry_of set) share it.
    where = sa.text('sweep_id IS NOT NULL AND retry_of IS NULL')
    op.create_index(
        'ux_jobs_sweep_trial', 'jobs', ['sweep_id', 'trial_number'], unique=True,
        sqlite_where=where, postgresql_where=where,
    )


def downgrade() -> None:
    op.drop_index('ux_jobs_sweep_trial', table_name='jobs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        for column in ('pruned', 'trial', 'trial_number', 'sweep_id'):
            batch_op.drop_column(column)
    op.drop_index('ix_sweeps_status', table_name='sweeps')
    op.drop_table('sweeps')
