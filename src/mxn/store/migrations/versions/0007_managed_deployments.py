"""managed deployments: replicas that mxn launches and registers as endpoints

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "managed_deployments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "deployment_id",
            sa.Integer(),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("memory_fraction", sa.Float(), nullable=False, server_default="0.9"),
        sa.Column("state", sa.String(16), nullable=False, server_default="deploying"),
        sa.Column("created_cell", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("replica", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("replica")
    op.drop_table("managed_deployments")
