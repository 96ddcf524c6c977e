"""The registry's version history: stored versions of studies; changes carry the version's date and number.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registryversion",
        sa.Column("nct_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("submitted", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("module_labels", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("record", sa.LargeBinary(), nullable=True),
        sa.Column("listed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("fetched_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("nct_id", "version"),
    )
    with op.batch_alter_table("change") as batch_op:
        batch_op.add_column(sa.Column("effective_date", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("registry_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("change") as batch_op:
        batch_op.drop_column("registry_version")
        batch_op.drop_column("effective_date")
    op.drop_table("registryversion")
