"""stored responses (OpenAI Responses API `store`): each belongs to the user who made it and expires

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
    )
    op.create_index(op.f("ix_responses_user_id"), "responses", ["user_id"])
    op.create_index(op.f("ix_responses_expires_at"), "responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_responses_expires_at"), table_name="responses")
    op.drop_index(op.f("ix_responses_user_id"), table_name="responses")
    op.drop_table("responses")
