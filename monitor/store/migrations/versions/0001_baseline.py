"""Baseline: the tables of the releases before migrations (store, review UI, rollout).

Databases made by those releases were created table by table (``create_all``) and had
two columns added later by hand (``review_items.version`` and ``crop``). So this
revision creates only what is missing: on an empty database it creates everything, on
an old one it adds the missing tables, indexes and the two columns, and leaves the data
alone. Every later revision is a plain, unconditional migration.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = 64


def _id(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.String(ID), nullable=False, **kw)


def _text(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)


def _in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=name)


STAGES = ("manual", "limited", "expansion", "full")


def _tables() -> list[tuple[str, list, dict, list[tuple[str, list[str], bool]]]]:
    """(table, columns and constraints, table options, indexes) in dependency order."""
    return [
        ("sites", [_text("name"), _id("id"), sa.PrimaryKeyConstraint("id")], {}, []),
        ("cameras", [
            _text("name"), _text("url_display"), sa.Column("enabled", sa.Boolean(), nullable=False),
            _id("id"), _id("site_id"),
            sa.ForeignKeyConstraint(["site_id"], ["sites.id"]), sa.PrimaryKeyConstraint("id"),
        ], {}, [("ix_cameras_site_id", ["site_id"], False)]),
        ("review_items", [
            _id("site_id"), _id("camera_id"), _time("captured_at"),
            sa.Column("media_ts", sa.Float(), nullable=True), _text("label"),
            sa.Column("confidence", sa.Float(), nullable=False), sa.Column("probabilities", JSON, nullable=False),
            _text("model_id"), sa.Column("crop", JSON, nullable=True), _text("review_label", True),
            _time("reviewed_at", True), sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("reason", sa.String(32), nullable=False),
            sa.Column("status", sa.String(32), server_default="pending", nullable=False),
            _text("snapshot"), _time("created_at"), _count("version"),
            _in("reason", ("positive", "negative_sample", "out_of_domain", "audit"), "ck_review_items_reason"),
            _in("status", ("pending", "approved", "rejected", "relabelled"), "ck_review_items_status"),
            sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]), sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
            sa.PrimaryKeyConstraint("id"),
        ], {"sqlite_autoincrement": True}, [
            ("ix_review_items_camera_captured", ["camera_id", "captured_at"], False),
            ("ix_review_items_camera_id_id", ["camera_id", "id"], False),
            ("ix_review_items_site_id_id", ["site_id", "id"], False),
            ("ix_review_items_status_id", ["status", "id"], False),
        ]),
        ("camera_hours", [
            _id("camera_id"), _time("hour"), _count("frames"), _count("failed"), _count("dropped"),
            sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]), sa.PrimaryKeyConstraint("camera_id", "hour"),
        ], {}, [("ix_camera_hours_hour", ["hour"], False)]),
        ("label_hours", [
            _id("camera_id"), _time("hour"), _text("label"), _count("predictions"), _count("positives"),
            sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"]),
            sa.PrimaryKeyConstraint("camera_id", "hour", "label"),
        ], {}, [("ix_label_hours_hour", ["hour"], False)]),
        ("users", [
            _id("name"), sa.Column("id", sa.Integer(), nullable=False), _text("password_hash"),
            sa.Column("disabled", sa.Boolean(), nullable=False), _time("created_at"), sa.PrimaryKeyConstraint("id"),
        ], {}, [("ux_users_name", ["name"], True)]),
        ("api_tokens", [
            sa.Column("id", sa.Integer(), nullable=False), sa.Column("user_id", sa.Integer(), nullable=False),
            _text("name"), _id("token_hash"), _time("created_at"), _time("revoked_at", True),
            sa.ForeignKeyConstraint(["user_id"], ["users.id"]), sa.PrimaryKeyConstraint("id"),
        ], {}, [("ix_api_tokens_user_id", ["user_id"], False), ("ux_api_tokens_hash", ["token_hash"], True)]),
        ("web_sessions", [
            _id("token_hash"), sa.Column("user_id", sa.Integer(), nullable=False), _text("csrf_token"),
            _time("created_at"), _time("expires_at"),
            sa.ForeignKeyConstraint(["user_id"], ["users.id"]), sa.PrimaryKeyConstraint("token_hash"),
        ], {}, [("ix_web_sessions_user_id", ["user_id"], False)]),
        ("review_decisions", [
            sa.Column("item_id", sa.Integer(), nullable=False), _text("reviewer"),
            sa.Column("action", sa.String(16), nullable=False), sa.Column("previous_status", sa.String(32), nullable=False),
            _text("previous_label", True), sa.Column("status", sa.String(32), nullable=False),
            _text("review_label", True), _text("note", True), sa.Column("undoes_id", sa.Integer(), nullable=True),
            sa.Column("version", sa.Integer(), nullable=False), _time("decided_at"),
            sa.Column("id", sa.Integer(), nullable=False), sa.Column("user_id", sa.Integer(), nullable=False),
            _in("action", ("approve", "reject", "relabel", "undo"), "ck_review_decisions_action"),
            sa.ForeignKeyConstraint(["item_id"], ["review_items.id"]), sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
            sa.PrimaryKeyConstraint("id"),
        ], {"sqlite_autoincrement": True}, [
            ("ix_review_decisions_item_id", ["item_id", "id"], False),
            ("ix_review_decisions_user_id", ["user_id"], False),
        ]),
        ("rollout_site_stages", [
            sa.Column("stage", sa.String(16), nullable=False), _time("since"), _text("model_id", True),
            _count("consecutive_failures"), _time("last_evaluated_at", True), _text("last_verdict", True),
            _id("site_id"), _count("version"),
            _in("stage", STAGES, "ck_rollout_site_stages_stage"), sa.PrimaryKeyConstraint("site_id"),
        ], {}, []),
        ("rollout_events", [
            _id("site_id"), _time("at"), _text("actor"), sa.Column("action", sa.String(32), nullable=False),
            sa.Column("from_stage", sa.String(16), nullable=False), sa.Column("to_stage", sa.String(16), nullable=False),
            sa.Column("forced", sa.Boolean(), nullable=False), _text("model_id", True),
            sa.Column("evidence", JSON, nullable=False), _text("reason", True),
            sa.Column("id", sa.Integer(), nullable=False),
            _in("action", ("promote", "rollback", "auto_rollback", "window_added", "window_removed"),
                "ck_rollout_events_action"),
            _in("from_stage", STAGES, "ck_rollout_events_from_stage"),
            _in("to_stage", STAGES, "ck_rollout_events_to_stage"),
            sa.PrimaryKeyConstraint("id"),
        ], {"sqlite_autoincrement": True}, [("ix_rollout_events_site_id_id", ["site_id", "id"], False)]),
        ("rollout_windows", [
            _id("site_id"), _text("cron"), _text("timezone"), sa.Column("duration_s", sa.Float(), nullable=False),
            _time("until"), _time("created_at"), _text("created_by"), _time("removed_at", True),
            _text("removed_by", True), sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint("id"),
        ], {"sqlite_autoincrement": True}, [("ix_rollout_windows_site_id", ["site_id"], False)]),
    ]


def _legacy_columns(table: str) -> list[sa.Column]:
    """Columns the releases before migrations added to existing tables by hand."""
    if table == "review_items":
        return [_count("version"), sa.Column("crop", JSON, nullable=True)]
    return []


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, columns, options, indexes in _tables():
        if name in existing:
            present = {column["name"] for column in inspector.get_columns(name)}
            for column in _legacy_columns(name):
                if column.name not in present:
                    op.add_column(name, column)
            have = {index["name"] for index in inspector.get_indexes(name)}
        else:
            op.create_table(name, *columns, **options)
            have = set()
        for index, index_columns, unique in indexes:
            if index not in have:
                op.create_index(index, name, index_columns, unique=unique)


def downgrade() -> None:
    for name, _columns, _options, _indexes in reversed(_tables()):
        op.drop_table(name)
