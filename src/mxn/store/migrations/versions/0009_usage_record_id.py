"""usage record ids: records moved from a replica's journal into the store land once, however often they are moved

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the rows written before have none (and a unique index lets NULLs be many, in SQLite and PostgreSQL).
    with op.batch_alter_table("usage") as batch_op:
        batch_op.add_column(sa.Column("record_id", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_usage_record_id"), ["record_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_record_id"))
        batch_op.drop_column("record_id")
