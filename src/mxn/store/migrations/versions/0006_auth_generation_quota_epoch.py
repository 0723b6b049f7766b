"""auth generation token; quota epochs for replicas' held balances

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("INSERT INTO kv (key, value) VALUES ('auth_generation', '0')")
    for table in ("users", "api_keys"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("quota_epoch", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in ("users", "api_keys"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("quota_epoch")
    op.execute("DELETE FROM kv WHERE key = 'auth_generation'")
