"""A skipped record's streak remembers when the operator was told of it (told once per streak);
a sync run counts the studies it left for the next sync (their history did not all fit).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rejectedrecord") as batch_op:
        batch_op.add_column(sa.Column("alerted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    with op.batch_alter_table("syncrun") as batch_op:
        batch_op.add_column(sa.Column("deferred", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("syncrun") as batch_op:
        batch_op.drop_column("deferred")
    with op.batch_alter_table("rejectedrecord") as batch_op:
        batch_op.drop_column("alerted_at")
