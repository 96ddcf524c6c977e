"""Subscribers and their subscriptions (one row per watch, since when); delisted studies; rejected records;
which failed syncs the operator was told about.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Each subscriberstate row becomes a config subscriber with one placeholder subscription (watch
"*"): the next time the config is read, it becomes one row per configured watch with the
subscriber's old start, so nobody loses or gains news by the upgrade. A subscription starts
after a change id, not at a time: ids only grow, while two moments in one second tie.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AutoString = sqlmodel.sql.sqltypes.AutoString
UTCDateTime = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "subscriber",
        sa.Column("key", AutoString(), nullable=False),
        sa.Column("email", AutoString(), nullable=True),
        sa.Column("source", AutoString(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("frequency", AutoString(), nullable=False),
        sa.Column("kinds", AutoString(), nullable=True),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("last_slot", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("unsubscribed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "subscription",
        sa.Column("subscriber", AutoString(), nullable=False),
        sa.Column("watch", AutoString(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("after_change", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber"], ["subscriber.key"]),
        sa.PrimaryKeyConstraint("subscriber", "watch"),
    )
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_watch"), ["watch"], unique=False)
    op.create_table(
        "rejectedrecord",
        sa.Column("nct_id", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("nct_id"),
    )
    with op.batch_alter_table("membership") as batch_op:
        batch_op.add_column(sa.Column("delisted_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("syncrun") as batch_op:
        batch_op.add_column(sa.Column("alerted", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "INSERT INTO subscriber (key, email, source, state, frequency, kinds, since, last_slot, created_at) "
        "SELECT email, email, 'config', 'active', 'daily', NULL, since, last_slot, since FROM subscriberstate"
    )
    op.execute(
        "INSERT INTO subscription (subscriber, watch, since, after_change) SELECT s.email, '*', s.since, "
        "COALESCE((SELECT MAX(c.id) FROM change c WHERE c.detected_at < s.since), 0) FROM subscriberstate s"
    )
    op.drop_table("subscriberstate")


def downgrade() -> None:
    op.create_table(
        "subscriberstate",
        sa.Column("email", AutoString(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("last_slot", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("email"),
    )
    op.execute(
        "INSERT INTO subscriberstate (email, since, last_slot) SELECT key, since, last_slot FROM subscriber "
        "WHERE source = 'config'"
    )
    op.execute("DELETE FROM subscription")
    with op.batch_alter_table("syncrun") as batch_op:
        batch_op.drop_column("alerted")
    with op.batch_alter_table("membership") as batch_op:
        batch_op.drop_column("delisted_at")
    op.drop_table("rejectedrecord")
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_watch"))
    op.drop_table("subscription")
    op.drop_table("subscriber")
