"""The store's SQL tables (SQLModel) and the models the API serves.

Responsible for the shape of the data: sites and cameras (mirrored from the config),
review items (one row per still put in front of a person) and the hourly counts that
later become baselines. Follows the ``XBase`` / ``X(table=True)`` / ``XPublic``
convention; nothing ever inherits from a table model.

Choices worth knowing:

* Datetimes are stored as UTC (``timestamptz`` on PostgreSQL, UTC text on SQLite) and
  always come back timezone-aware in UTC (:class:`UTCDateTime`); naive ones are refused.
* ``reason`` and ``status`` are plain strings guarded by CHECK constraints, so rows read
  back as the values (``"positive"``) that templates, JSON and tables print as is; the
  enums :class:`~monitor.types.QueueReason` and :class:`ReviewStatus` compare equal.
* Only ids have a length limit (config ids are at most 64 characters); free text such
  as names, labels, model ids and paths is unbounded, so a long value can never make
  PostgreSQL refuse a batch that SQLite would have taken.
* The hourly tables are keyed by (camera, UTC hour[, label]); they are only ever
  changed by an increment upsert (see :func:`monitor.store.queue.upsert_increments`).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import JSON, CheckConstraint, DateTime, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from monitor.types import QueueReason

ID_LENGTH = 64


class ReviewStatus(str, enum.Enum):
    """Where a review item stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    RELABELLED = "relabelled"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def utc_hour(moment: datetime) -> datetime:
    """The start of the UTC hour that ``moment`` falls in (the hourly tables' key).

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.utcoffset() is None:
        raise ValueError("hour must be a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as UTC and always read back aware, in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            # A naive value would be read back as UTC although it probably is local time.
            raise ValueError("datetimes stored must be timezone-aware; use datetime.now(timezone.utc)")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            # SQLite has no time zones; the stored text is UTC without an offset, which
            # also keeps text comparison and ordering equal to time ordering.
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


def _in_values(column: str, enum_cls: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum_cls)})"


# ---------------------------------------------------------------- sites and cameras


class SiteBase(SQLModel):
    name: str = Field(description="display name")


class Site(SiteBase, table=True):
    """A site from the config; kept when removed from the config (items refer to it)."""

    __tablename__ = "sites"

    id: str = Field(primary_key=True, max_length=ID_LENGTH)


class SitePublic(SiteBase):
    id: str


class CameraBase(SQLModel):
    name: str = Field(description="display name")
    url_display: str = Field(description="the camera's URL or path with credentials masked; never the raw URL")
    enabled: bool = Field(True, description="false when disabled or no longer in the config")


class Camera(CameraBase, table=True):
    """A camera from the config."""

    __tablename__ = "cameras"

    id: str = Field(primary_key=True, max_length=ID_LENGTH)
    site_id: str = Field(foreign_key="sites.id", index=True, max_length=ID_LENGTH)


class CameraPublic(CameraBase):
    id: str
    site_id: str


# ---------------------------------------------------------------- review items


class ReviewItemBase(SQLModel):
    site_id: str = Field(foreign_key="sites.id", max_length=ID_LENGTH)
    camera_id: str = Field(foreign_key="cameras.id", max_length=ID_LENGTH)
    captured_at: datetime = Field(sa_type=UTCDateTime, description="when the still was captured (UTC)")
    media_ts: float | None = Field(None, description="seconds into a video file; null for live streams")
    label: str = Field(description="the model's most probable label")
    confidence: float = Field(ge=0.0, le=1.0, description="probability of `label`")
    probabilities: dict[str, float] = Field(
        default_factory=dict, sa_type=JSON_TYPE, description="every label's probability"
    )
    model_id: str = Field(description="model (and version) that made the prediction")
    crop: list[int] | None = Field(
        None, sa_type=JSON_TYPE, description="[x, y, width, height] of the square crop that fired, in snapshot pixels"
    )
    ood_reasons: list[str] = Field(
        default_factory=list, sa_type=JSON_TYPE, sa_column_kwargs={"server_default": "[]"},
        description="why the still looked out of domain (dark, blur, grayscale, frozen, low_confidence); "
        "empty when it did not",
    )
    review_label: str | None = Field(None, description="the label a reviewer gave when relabelling")
    reviewed_at: datetime | None = Field(None, sa_type=UTCDateTime, description="when it was reviewed (UTC)")


class ReviewItem(ReviewItemBase, table=True):
    """One still in the review queue; the JPEG lives in the snapshot store."""

    __tablename__ = "review_items"
    __table_args__ = (
        CheckConstraint(_in_values("reason", QueueReason), name="ck_review_items_reason"),
        CheckConstraint(_in_values("status", ReviewStatus), name="ck_review_items_status"),
        # The queue lists newest first by status; keyset paging walks these backwards.
        Index("ix_review_items_status_id", "status", "id"),
        Index("ix_review_items_site_id_id", "site_id", "id"),
        Index("ix_review_items_camera_id_id", "camera_id", "id"),
        Index("ix_review_items_camera_captured", "camera_id", "captured_at"),
        # Ids are never reused, so a page boundary (before_id) stays meaningful.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    reason: str = Field(sa_type=String(32), description="a QueueReason value")
    status: str = Field(
        default=ReviewStatus.PENDING.value,
        sa_type=String(32),
        sa_column_kwargs={"server_default": ReviewStatus.PENDING.value},
        description="a ReviewStatus value",
    )
    snapshot: str = Field(description="JPEG path relative to the snapshot root")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Optimistic concurrency: every decision or undo is a compare-and-set on this number,
    # so a reviewer acting on a stale copy gets a conflict instead of overwriting.
    version: int = Field(
        default=0, ge=0, sa_column_kwargs={"server_default": text("0")},
        description="bumped by every decision and undo",
    )


class ReviewItemPublic(ReviewItemBase):
    """A review item as the API serves it: no file-system path (the API serves the JPEG
    itself under the item's id)."""

    id: int
    reason: QueueReason
    status: ReviewStatus
    created_at: datetime
    version: int = 0


# ---------------------------------------------------------------- hourly counts

_COUNT = {"ge": 0, "sa_column_kwargs": {"server_default": text("0")}}


class CameraHour(SQLModel, table=True):
    """Per camera per UTC hour: stills sampled, stills that failed, samples dropped."""

    __tablename__ = "camera_hours"
    __table_args__ = (Index("ix_camera_hours_hour", "hour"),)

    camera_id: str = Field(foreign_key="cameras.id", primary_key=True, max_length=ID_LENGTH)
    hour: datetime = Field(sa_type=UTCDateTime, primary_key=True, description="start of the UTC hour")
    frames: int = Field(0, **_COUNT)  # type: ignore[arg-type]
    failed: int = Field(0, **_COUNT)  # type: ignore[arg-type]
    dropped: int = Field(0, **_COUNT)  # type: ignore[arg-type]
    out_of_domain: int = Field(0, **_COUNT)  # type: ignore[arg-type]  # classified stills with an OOD signal
    # Positives that start an alert episode (none of the camera's positives in the
    # episode gap before): the drift detector's Poisson-like alert count.
    alert_episodes: int = Field(0, **_COUNT)  # type: ignore[arg-type]


class LabelHour(SQLModel, table=True):
    """Per camera per UTC hour per predicted label: predictions and positives."""

    __tablename__ = "label_hours"
    __table_args__ = (Index("ix_label_hours_hour", "hour"),)

    camera_id: str = Field(foreign_key="cameras.id", primary_key=True, max_length=ID_LENGTH)
    hour: datetime = Field(sa_type=UTCDateTime, primary_key=True, description="start of the UTC hour")
    label: str = Field(primary_key=True)
    predictions: int = Field(0, **_COUNT)  # type: ignore[arg-type]
    positives: int = Field(0, **_COUNT)  # type: ignore[arg-type]


CONFIDENCE_BUCKETS = 10


class ConfidenceHour(SQLModel, table=True):
    """Per camera per UTC hour: predictions whose confidence fell in each tenth of [0, 1]
    (bucket 0 is [0, 0.1), bucket 9 is [0.9, 1]); the drift detector's confidence histograms."""

    __tablename__ = "confidence_hours"
    __table_args__ = (Index("ix_confidence_hours_hour", "hour"),)

    camera_id: str = Field(foreign_key="cameras.id", primary_key=True, max_length=ID_LENGTH)
    hour: datetime = Field(sa_type=UTCDateTime, primary_key=True, description="start of the UTC hour")
    bucket: int = Field(primary_key=True, ge=0, lt=CONFIDENCE_BUCKETS, description="floor(confidence * 10), 9 at most")
    predictions: int = Field(0, **_COUNT)  # type: ignore[arg-type]


def confidence_bucket(confidence: float) -> int:
    """The :class:`ConfidenceHour` bucket of a confidence in [0, 1]."""
    return min(CONFIDENCE_BUCKETS - 1, max(0, int(confidence * CONFIDENCE_BUCKETS)))


# ---------------------------------------------------------------- drift flags


class DriftKind(str, enum.Enum):
    """What a drift flag says changed."""

    RATE_UP = "rate_up"
    RATE_DOWN = "rate_down"
    CONFIDENCE = "confidence"
    CLASS_MIX = "class_mix"
    OUT_OF_DOMAIN = "out_of_domain"


class DriftFlagBase(SQLModel):
    site_id: str = Field(max_length=ID_LENGTH, description="the site")
    camera_id: str | None = Field(
        None, max_length=ID_LENGTH, description="the camera; null for the site's cameras pooled"
    )
    kind: str = Field(sa_type=String(16), description="a DriftKind value")
    opened_at: datetime = Field(sa_type=UTCDateTime, description="when the detector first saw the change (UTC)")
    closed_at: datetime | None = Field(None, sa_type=UTCDateTime, description="when it closed; null while open")
    last_seen_at: datetime = Field(sa_type=UTCDateTime, description="the last evaluation that still saw it")
    statistic: float | None = Field(None, description="rate ratio, PSI, distance or OOD ratio when last seen")
    detail: str = Field("", description="one line with the numbers, for people")


class DriftFlag(DriftFlagBase, table=True):
    """A change the drift detector found, open from ``opened_at`` until ``closed_at``.

    No foreign key to sites or cameras: flags must outlive a camera leaving the config.
    """

    __tablename__ = "drift_flags"
    __table_args__ = (
        CheckConstraint(_in_values("kind", DriftKind), name="ck_drift_flags_kind"),
        Index("ix_drift_flags_site_closed", "site_id", "closed_at"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)


class DriftFlagPublic(DriftFlagBase):
    id: int


# ---------------------------------------------------------------- reviewers and decisions


class DecisionAction(str, enum.Enum):
    """What a reviewer did to an item; ``undo`` reverts the decision it names."""

    APPROVE = "approve"
    REJECT = "reject"
    RELABEL = "relabel"
    UNDO = "undo"


class UserBase(SQLModel):
    name: str = Field(max_length=ID_LENGTH, description="sign-in name")


class User(UserBase, table=True):
    """A reviewer who can sign in; only a password hash (argon2) is kept."""

    __tablename__ = "users"
    __table_args__ = (Index("ux_users_name", "name", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    password_hash: str = Field(description="argon2id hash; never the password")
    disabled: bool = Field(False, description="a disabled user can neither sign in nor use tokens")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class UserPublic(UserBase):
    id: int
    disabled: bool
    created_at: datetime


class ApiToken(SQLModel, table=True):
    """A bearer token for scripts; only its SHA-256 is kept (tokens are 256 random bits,
    so a fast hash is enough, unlike passwords)."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ux_api_tokens_hash", "token_hash", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field("", description="what the token is for")
    token_hash: str = Field(max_length=64, description="sha256 hex of the token")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(None, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is kept, so
    a copy of the database cannot be used to sign in, and signing out really ends it."""

    __tablename__ = "web_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    csrf_token: str = Field(description="synchronizer token every form post and cookie API call must echo")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class ReviewDecisionBase(SQLModel):
    item_id: int = Field(foreign_key="review_items.id")
    reviewer: str = Field(description="the reviewer's name when deciding")
    action: str = Field(sa_type=String(16), description="a DecisionAction value")
    previous_status: str = Field(sa_type=String(32))
    previous_label: str | None = Field(None, description="review_label before")
    status: str = Field(sa_type=String(32), description="status after")
    review_label: str | None = Field(None, description="review_label after")
    note: str | None = Field(None, description="free text from the reviewer")
    undoes_id: int | None = Field(None, description="for an undo: the decision it reverts")
    version: int = Field(description="the item's version after this decision")
    decided_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReviewDecision(ReviewDecisionBase, table=True):
    """Append-only history of decisions: rows are only ever inserted (and deleted with
    their item by an explicit prune of reviewed items)."""

    __tablename__ = "review_decisions"
    __table_args__ = (
        CheckConstraint(_in_values("action", DecisionAction), name="ck_review_decisions_action"),
        Index("ix_review_decisions_item_id", "item_id", "id"),
        Index("ix_review_decisions_user_id", "user_id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id")


class ReviewDecisionPublic(ReviewDecisionBase):
    id: int
