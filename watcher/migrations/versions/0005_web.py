"""The web pages: link tokens (stored as hashes), rate-limit hits, the signing secret; outbox messages have a kind.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Existing outbox rows are digests.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString
UTCDateTime = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("digest") as batch_op:
        batch_op.add_column(sa.Column("kind", AutoString(), nullable=False, server_default="digest"))
    op.create_table(
        "webtoken",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", AutoString(), nullable=False),
        sa.Column("subscriber", AutoString(), nullable=False),
        sa.Column("purpose", AutoString(), nullable=False),
        sa.Column("nonce", AutoString(), nullable=True),
        sa.Column("digest_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["digest_id"], ["digest.id"]),
        sa.ForeignKeyConstraint(["subscriber"], ["subscriber.key"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webtoken") as batch_op:
        batch_op.create_index(batch_op.f("ix_webtoken_subscriber"), ["subscriber"], unique=False)
        batch_op.create_index(batch_op.f("ix_webtoken_token_hash"), ["token_hash"], unique=True)
    op.create_table(
        "ratehit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket", AutoString(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ratehit") as batch_op:
        batch_op.create_index(batch_op.f("ix_ratehit_bucket"), ["bucket"], unique=False)
        batch_op.create_index(batch_op.f("ix_ratehit_at"), ["at"], unique=False)
    op.create_table(
        "websecret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", AutoString(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("websecret")
    with op.batch_alter_table("ratehit") as batch_op:
        batch_op.drop_index(batch_op.f("ix_ratehit_at"))
        batch_op.drop_index(batch_op.f("ix_ratehit_bucket"))
    op.drop_table("ratehit")
    with op.batch_alter_table("webtoken") as batch_op:
        batch_op.drop_index(batch_op.f("ix_webtoken_token_hash"))
        batch_op.drop_index(batch_op.f("ix_webtoken_subscriber"))
    op.drop_table("webtoken")
    op.execute("UPDATE digest SET status = 'failed' WHERE status = 'cancelled'")
    op.execute("DELETE FROM digest WHERE kind <> 'digest'")
    with op.batch_alter_table("digest") as batch_op:
        batch_op.drop_column("kind")
