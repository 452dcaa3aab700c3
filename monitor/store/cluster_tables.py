"""Tables that let many `monitor run` workers share one database, and the alert outbox.

Responsible for the shape of:

* :class:`WorkerRow` (``workers``): each live worker's heartbeat, so the others know how
  many share the cameras and can split them evenly.
* :class:`CameraLease` (``camera_leases``): which worker samples a camera, until when,
  and a fencing ``token`` that every new claim bumps, so a worker that lost a camera
  (paused past its lease, cut off from the database) can no longer record for it.
* :class:`SampleRow` (``samples``): one row per recorded still, keyed by (camera,
  capture time, origin). The primary key is the database's own guarantee that a still
  is never recorded twice, whatever the workers believe about their leases. ``origin``
  is constant for a live camera (so the key is camera and time) and names the file for
  a folder of stills, where a burst of photos can share one EXIF second.
* :class:`Alert` (``alerts``) and :class:`OutboxEntry` (``outbox``): the transactional
  outbox. An alert and one outbox entry per notification target are inserted in the
  same transaction as the still's review rows; a dispatcher delivers the entries later
  and marks them delivered, or dead when the retry policy gives up on one (an operator
  requeues or discards dead entries). The alert's ``key`` is the idempotency key
  receivers deduplicate by; it is derived from the still (camera, capture time,
  origin), so it is stable, and unique like the still itself.
* :class:`JobLease` (``job_leases``): which worker runs a job that must run in one
  process only (the drift detector, the rollout gate evaluation), with a fencing token like a camera lease's.

Kept apart from :mod:`monitor.store.tables` because these are about running many
processes, not about the review data; they register on the same ``SQLModel.metadata``.
Follows the ``X(table=True)`` convention and the store's UTC datetime type.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from monitor.store.tables import ID_LENGTH, JSON_TYPE, UTCDateTime, utcnow

KEY_LENGTH = 36  # a UUID in its text form


class OutboxStatus(str, enum.Enum):
    """Where an outbox entry stands; entries are never deleted by the dispatcher.

    ``pending`` entries are delivered in order per (target, camera). ``dead`` ones were
    given up on by the retry policy: they no longer hold up the camera's later alerts,
    and stay until an operator requeues them (back to pending) or discards them.
    Only ``delivered`` and ``discarded`` entries are ever pruned.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISCARDED = "discarded"


class WorkerRow(SQLModel, table=True):
    """A `monitor run --worker NAME` process, kept alive by its heartbeat."""

    __tablename__ = "workers"

    name: str = Field(primary_key=True, max_length=ID_LENGTH)
    hostname: str = Field("", description="where the worker runs (for people)")
    pid: int = Field(0, description="process id on that host (for people)")
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, description="dead unless renewed before this (UTC)")


class CameraLease(SQLModel, table=True):
    """Which worker samples a camera; free when ``owner`` is null or ``expires_at`` passed."""

    __tablename__ = "camera_leases"

    camera_id: str = Field(foreign_key="cameras.id", primary_key=True, max_length=ID_LENGTH)
    owner: str | None = Field(None, max_length=ID_LENGTH, description="the worker holding the lease")
    token: int = Field(
        0, ge=0, sa_column_kwargs={"server_default": text("0")},
        description="fencing token: bumped by every claim, checked when recording",
    )
    expires_at: datetime | None = Field(None, sa_type=UTCDateTime)
    acquired_at: datetime | None = Field(None, sa_type=UTCDateTime)


class SampleRow(SQLModel, table=True):
    """One recorded still; the primary key makes recording the same still twice impossible."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_captured_at", "captured_at"),)

    camera_id: str = Field(foreign_key="cameras.id", primary_key=True, max_length=ID_LENGTH)
    captured_at: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    origin: str = Field(
        "", primary_key=True, sa_column_kwargs={"server_default": ""},
        description="where in the source the still came from (Frame.origin): the file of a still",
    )
    worker: str | None = Field(None, max_length=ID_LENGTH, description="who recorded it")
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Alert(SQLModel, table=True):
    """An alert the routing policy raised for one still (stages limited and later)."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("key", name="ux_alerts_key"),
        # Pruning samples keeps the rows of stills that still have an alert.
        Index("ix_alerts_camera_captured", "camera_id", "captured_at"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=KEY_LENGTH, description="idempotency key receivers deduplicate by")
    site_id: str = Field(foreign_key="sites.id", max_length=ID_LENGTH)
    camera_id: str = Field(foreign_key="cameras.id", max_length=ID_LENGTH)
    captured_at: datetime = Field(sa_type=UTCDateTime)
    label: str
    confidence: float
    model_id: str
    worker: str | None = Field(None, max_length=ID_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OutboxEntry(SQLModel, table=True):
    """One notification of one alert to one target, delivered by the dispatcher."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(
            f"status IN ({', '.join(repr(s.value) for s in OutboxStatus)})", name="ck_outbox_status"
        ),
        UniqueConstraint("alert_id", "target", name="ux_outbox_alert_target"),
        # The dispatcher's question: the oldest pending entry per (target, camera).
        Index("ix_outbox_target_camera_status_id", "target", "camera_id", "status", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alerts.id")
    target: str = Field(max_length=ID_LENGTH, description="the notify target's name in the config")
    camera_id: str = Field(max_length=ID_LENGTH, description="copied from the alert: delivery is ordered per camera")
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    status: str = Field(
        default=OutboxStatus.PENDING.value, sa_type=String(16),
        sa_column_kwargs={"server_default": OutboxStatus.PENDING.value},
    )
    attempts: int = Field(0, ge=0, sa_column_kwargs={"server_default": text("0")})
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_error: str | None = Field(None, description="why the last attempt failed, one line")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(None, sa_type=UTCDateTime)
    dead_at: datetime | None = Field(None, sa_type=UTCDateTime, description="when it went dead (or was discarded)")
    requeued_at: datetime | None = Field(
        None, sa_type=UTCDateTime, description="when an operator last requeued it; its age counts from here"
    )


class JobLease(SQLModel, table=True):
    """Which worker runs a job that must run once across all workers; free when expired."""

    __tablename__ = "job_leases"

    name: str = Field(primary_key=True, max_length=ID_LENGTH, description="the job, e.g. drift")
    owner: str | None = Field(None, max_length=ID_LENGTH, description="the worker running it")
    token: int = Field(
        0, ge=0, sa_column_kwargs={"server_default": text("0")},
        description="fencing token: bumped by every claim, checked before the job writes",
    )
    expires_at: datetime | None = Field(None, sa_type=UTCDateTime)
    acquired_at: datetime | None = Field(None, sa_type=UTCDateTime)
