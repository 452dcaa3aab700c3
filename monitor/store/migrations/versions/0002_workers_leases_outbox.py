"""Many workers and notifications: worker heartbeats, camera leases, recorded samples, alerts and their outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _time("started_at"),
        _time("expires_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "camera_leases",
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("token", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _time("expires_at", True),
        _time("acquired_at", True),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]),
        sa.PrimaryKeyConstraint("camera_id"),
    )
    op.create_table(
        "samples",
        sa.Column("camera_id", sa.String(64), nullable=False),
        _time("captured_at"),
        sa.Column("origin", sa.String(), server_default="", nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        _time("recorded_at"),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]),
        sa.PrimaryKeyConstraint("camera_id", "captured_at", "origin"),
    )
    op.create_index("ix_samples_captured_at", "samples", ["captured_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(36), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        _time("captured_at"),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        _time("created_at"),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", name="ux_alerts_key"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _time("next_attempt_at"),
        sa.Column("last_error", sa.String(), nullable=True),
        _time("created_at"),
        _time("delivered_at", True),
        sa.CheckConstraint("status IN ('pending', 'delivered')", name="ck_outbox_status"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id", "target", name="ux_outbox_alert_target"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_target_camera_status_id", "outbox", ["target", "camera_id", "status", "id"])


def downgrade() -> None:
    for table in ("outbox", "alerts", "samples", "camera_leases", "workers"):
        op.drop_table(table)
