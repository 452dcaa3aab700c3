"""Dead letters, pruning and one-worker jobs: outbox statuses dead and discarded (with when), an
alerts index by camera and capture time, job leases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_STATUSES = "status IN ('pending', 'delivered')"
NEW_STATUSES = "status IN ('pending', 'delivered', 'dead', 'discarded')"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _outbox_statuses(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table (keeping
    # AUTOINCREMENT, so ids of pruned entries are never reused); PostgreSQL drops and
    # adds it in place.
    with op.batch_alter_table("outbox", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("ck_outbox_status", type_="check")
        batch.create_check_constraint("ck_outbox_status", condition)


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(_time("dead_at", True))
        batch.add_column(_time("requeued_at", True))
    _outbox_statuses(NEW_STATUSES)
    op.create_index("ix_alerts_camera_captured", "alerts", ["camera_id", "captured_at"])
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("token", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _time("expires_at", True),
        _time("acquired_at", True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_index("ix_alerts_camera_captured", "alerts")
    # Entries the old release cannot represent wait for delivery again.
    op.execute("UPDATE outbox SET status = 'pending' WHERE status IN ('dead', 'discarded')")
    _outbox_statuses(OLD_STATUSES)
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("requeued_at")
        batch.drop_column("dead_at")
