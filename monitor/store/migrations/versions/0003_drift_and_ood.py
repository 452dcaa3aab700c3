"""Out-of-domain marks and drift detection: review_items.ood_reasons, hourly OOD and alert-episode
counts, hourly confidence histograms, drift flags.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    # Old rows were never checked, so they get no reasons rather than a guess.
    with op.batch_alter_table("review_items") as batch:
        batch.add_column(sa.Column("ood_reasons", JSON, server_default="[]", nullable=False))
    with op.batch_alter_table("camera_hours") as batch:
        batch.add_column(_count("out_of_domain"))
        batch.add_column(_count("alert_episodes"))
    op.create_table(
        "confidence_hours",
        sa.Column("camera_id", sa.String(64), nullable=False),
        _time("hour"),
        sa.Column("bucket", sa.Integer(), nullable=False),
        _count("predictions"),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]),
        sa.PrimaryKeyConstraint("camera_id", "hour", "bucket"),
    )
    op.create_index("ix_confidence_hours_hour", "confidence_hours", ["hour"])
    op.create_table(
        "drift_flags",
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _time("opened_at"),
        _time("closed_at", True),
        _time("last_seen_at"),
        sa.Column("statistic", sa.Float(), nullable=True),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('rate_up', 'rate_down', 'confidence', 'class_mix', 'out_of_domain')", name="ck_drift_flags_kind"
        ),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_drift_flags_site_closed", "drift_flags", ["site_id", "closed_at"])


def downgrade() -> None:
    op.drop_table("drift_flags")
    op.drop_table("confidence_hours")
    with op.batch_alter_table("camera_hours") as batch:
        batch.drop_column("alert_episodes")
        batch.drop_column("out_of_domain")
    with op.batch_alter_table("review_items") as batch:
        batch.drop_column("ood_reasons")
