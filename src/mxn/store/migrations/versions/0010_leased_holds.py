"""leased quota holds: each chunk of a balance a replica holds is a row with the replica's lease, and each usage
record names the holds it was paid from, so that a dead replica's unspent chunks go back to the balance exactly;
usage records carry the request id the client saw

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_holds",
        sa.Column("id", sa.String(length=48), primary_key=True),
        sa.Column("replica", sa.String(length=32), nullable=False),
        sa.Column("journal", sa.String(length=32), nullable=False),
        sa.Column("balance", sa.String(length=16), nullable=False),
        sa.Column("ident", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("taken", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_quota_holds_replica"), "quota_holds", ["replica"])
    op.create_index(op.f("ix_quota_holds_lease_until"), "quota_holds", ["lease_until"])
    with op.batch_alter_table("usage") as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("user_hold", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("key_hold", sa.String(length=48), nullable=True))
        batch_op.create_index(batch_op.f("ix_usage_request_id"), ["request_id"])
        batch_op.create_index(batch_op.f("ix_usage_user_hold"), ["user_hold"])
        batch_op.create_index(batch_op.f("ix_usage_key_hold"), ["key_hold"])


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_key_hold"))
        batch_op.drop_index(batch_op.f("ix_usage_user_hold"))
        batch_op.drop_index(batch_op.f("ix_usage_request_id"))
        batch_op.drop_column("key_hold")
        batch_op.drop_column("user_hold")
        batch_op.drop_column("request_id")
    op.drop_index(op.f("ix_quota_holds_lease_until"), table_name="quota_holds")
    op.drop_index(op.f("ix_quota_holds_replica"), table_name="quota_holds")
    op.drop_table("quota_holds")
