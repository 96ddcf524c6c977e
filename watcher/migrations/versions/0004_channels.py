"""Outbox messages to chat channels and webhooks: how each travels, where to, its parts and next try.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Every existing row is an email (`channel` = 'email'). No secret is stored: a channel or webhook
is named by a digest of its URL as written in the config.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("digest") as batch_op:
        batch_op.add_column(
            sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(), server_default="email", nullable=False)
        )
        batch_op.add_column(sa.Column("target", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("parts_sent", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("next_attempt_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM digestchange WHERE digest_id IN (SELECT id FROM digest WHERE channel <> 'email')")
    op.execute("DELETE FROM digest WHERE channel <> 'email'")
    with op.batch_alter_table("digest") as batch_op:
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("parts_sent")
        batch_op.drop_column("target")
        batch_op.drop_column("channel")
