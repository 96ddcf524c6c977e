"""The schema of trial watcher 0.1 (its databases carry PRAGMA user_version = 1 and are adopted as this revision).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemonstate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("heartbeat", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("next_sync", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("next_digest", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "digest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("digest", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_digest_email"), ["email"], unique=False)
        batch_op.create_index(batch_op.f("ix_digest_status"), ["status"], unique=False)

    op.create_table(
        "membership",
        sa.Column("watch", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("nct_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("by_id", sa.Boolean(), nullable=False),
        sa.Column("by_search", sa.Boolean(), nullable=False),
        sa.Column("since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("watch", "nct_id"),
    )
    with op.batch_alter_table("membership", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_membership_nct_id"), ["nct_id"], unique=False)

    op.create_table(
        "snapshot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("nct_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("content_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("data_timestamp", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("stored_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("nct_id", "content_hash"),
    )
    with op.batch_alter_table("snapshot", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_snapshot_nct_id"), ["nct_id"], unique=False)

    op.create_table(
        "subscriberstate",
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_slot", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("email"),
    )
    op.create_table(
        "syncrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("data_timestamp", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("watches_fingerprint", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "watchstate",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("baseline_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("nct_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("field", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("old_json", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("new_json", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("site_json", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("detected_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["syncrun.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("change", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_change_detected_at"), ["detected_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_change_nct_id"), ["nct_id"], unique=False)

    op.create_table(
        "study",
        sa.Column("nct_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("brief_title", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("overall_status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("last_update", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("first_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("checked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("changed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["snapshot.id"],
        ),
        sa.PrimaryKeyConstraint("nct_id"),
    )
    op.create_table(
        "changewatch",
        sa.Column("change_id", sa.Integer(), nullable=False),
        sa.Column("watch", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["change.id"],
        ),
        sa.PrimaryKeyConstraint("change_id", "watch"),
    )
    with op.batch_alter_table("changewatch", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_changewatch_watch"), ["watch"], unique=False)

    op.create_table(
        "digestchange",
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["change.id"],
        ),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digest.id"],
        ),
        sa.PrimaryKeyConstraint("digest_id", "change_id"),
    )
    with op.batch_alter_table("digestchange", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_digestchange_change_id"), ["change_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("digestchange", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_digestchange_change_id"))

    op.drop_table("digestchange")
    with op.batch_alter_table("changewatch", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_changewatch_watch"))

    op.drop_table("changewatch")
    op.drop_table("study")
    with op.batch_alter_table("change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_change_nct_id"))
        batch_op.drop_index(batch_op.f("ix_change_detected_at"))

    op.drop_table("change")
    op.drop_table("watchstate")
    op.drop_table("syncrun")
    op.drop_table("subscriberstate")
    with op.batch_alter_table("snapshot", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshot_nct_id"))

    op.drop_table("snapshot")
    with op.batch_alter_table("membership", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_membership_nct_id"))

    op.drop_table("membership")
    with op.batch_alter_table("digest", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_digest_status"))
        batch_op.drop_index(batch_op.f("ix_digest_email"))

    op.drop_table("digest")
    op.drop_table("daemonstate")
