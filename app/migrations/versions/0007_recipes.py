"""recipes: jobs.recipe and recipe_version, sweeps.recipe, workers.recipes and recipe_errors

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TUTORIAL = 'cifar10-resnet18'


def upgrade() -> None:
    # Plain ADD COLUMNs, as in 0004: a batch copy of `jobs` on SQLite would cascade deletes.
    # Every job so far ran the tutorial, which is what the default says.
    op.add_column('jobs', sa.Column('recipe', sa.String(64), nullable=False, server_default=TUTORIAL))
    op.add_column('jobs', sa.Column('recipe_version', sa.String(32), nullable=True))
    op.add_column('sweeps', sa.Column('recipe', sa.String(64), nullable=False, server_default=TUTORIAL))
    # {recipe: version} a worker can run; {where it comes from: why it did not load}.
    op.add_column('workers', sa.Column('recipes', sa.JSON(), nullable=True))
    op.add_column('workers', sa.Column('recipe_errors', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('recipe_errors')
        batch_op.drop_column('recipes')
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_column('recipe')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('recipe_version')
        batch_op.drop_column('recipe')
