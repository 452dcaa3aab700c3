"""The store: SQL tables for the review queue and hourly counts, and snapshot JPEGs.

Public API (engines are always passed in; nothing here connects at import time):

* :func:`create_engine_for`, :func:`init_schema`, :func:`session_scope`, :class:`StoreError`
* :class:`SnapshotStore`, :class:`SnapshotNotFound`
* :func:`sync_sites_and_cameras`, :func:`record_predictions`, :func:`add_frame_counts`,
  :func:`list_items`, :func:`count_items`, :func:`get_item`, :func:`upsert_increments`
* tables :class:`Site`, :class:`Camera`, :class:`ReviewItem`, :class:`CameraHour`,
  :class:`LabelHour` and the API models ``*Public``
"""

from monitor.store.db import StoreError, create_engine_for, init_schema, session_scope
from monitor.store.queue import (
    PredictionRecord,
    add_frame_counts,
    count_items,
    get_item,
    list_items,
    record_predictions,
    sync_sites_and_cameras,
    upsert_increments,
)
from monitor.store.snapshots import SnapshotNotFound, SnapshotStore
from monitor.store.tables import (
    Camera,
    CameraHour,
    CameraPublic,
    LabelHour,
    ReviewItem,
    ReviewItemPublic,
    ReviewStatus,
    Site,
    SitePublic,
    utc_hour,
)

__all__ = [
    "Camera",
    "CameraHour",
    "CameraPublic",
    "LabelHour",
    "PredictionRecord",
    "ReviewItem",
    "ReviewItemPublic",
    "ReviewStatus",
    "Site",
    "SitePublic",
    "SnapshotNotFound",
    "SnapshotStore",
    "StoreError",
    "add_frame_counts",
    "count_items",
    "create_engine_for",
    "get_item",
    "init_schema",
    "list_items",
    "record_predictions",
    "session_scope",
    "sync_sites_and_cameras",
    "upsert_increments",
    "utc_hour",
]
