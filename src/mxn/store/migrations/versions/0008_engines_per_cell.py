"""engines per cell: a cell may have one managed deployment per engine; endpoints carry their own hardware
disclosure and the managed deployment they belong to

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# 0007 made `deployment_id` unique without naming the constraint: PostgreSQL named it itself, SQLite did not
# (batch mode finds it through this naming convention).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_name() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "managed_deployments_deployment_id_key"
    return "uq_managed_deployments_deployment_id"


def upgrade() -> None:
    with op.batch_alter_table("managed_deployments", naming_convention=NAMING) as batch:
        batch.drop_constraint(_unique_name(), type_="unique")
        batch.create_unique_constraint("uq_managed_deployments_cell_engine", ["deployment_id", "engine"])
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("hardware", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("managed_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_endpoints_managed_id", "managed_deployments", ["managed_id"], ["id"], ondelete="CASCADE"
        )
    op.execute(
        "UPDATE endpoints SET managed_id = (SELECT m.id FROM managed_deployments m "
        "WHERE m.deployment_id = endpoints.deployment_id) WHERE source = 'managed'"
    )


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_constraint("fk_endpoints_managed_id", type_="foreignkey")
        batch.drop_column("managed_id")
        batch.drop_column("hardware")
    with op.batch_alter_table("managed_deployments", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_managed_deployments_cell_engine", type_="unique")
        batch.create_unique_constraint(_unique_name(), ["deployment_id"])
