"""The JSON API under /api/v1: list and read review items, decide, undo, stats, snapshots.

Responsible for HTTP concerns only (parameters, status codes, response shapes); every
query and rule lives in :mod:`monitor.store.reviews`. Every endpoint needs a signed-in
user or an API token (401 otherwise); cookie-authenticated writes also need the
``X-CSRF-Token`` header (403). A decision on an item that changed since the caller's
``version`` returns 409 with the item as it is now.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from monitor.redact import redact_text, redact_url
from monitor.store import SnapshotNotFound
from monitor.store.reviews import (
    MAX_NOTE_CHARS,
    MAX_PAGE,
    DecisionConflict,
    Filters,
    ItemNotFound,
    approve_many,
    decide,
    get_item_or_raise,
    history,
    page_items,
    review_stats,
    undo,
)
from monitor.store.tables import Camera, ReviewDecisionPublic, ReviewItem, ReviewItemPublic, ReviewStatus
from monitor.types import QueueReason
from monitor.web.auth import Identity, api_user
from monitor.web.context import WebContext, get_ctx
from monitor.web.classify import ClassifyResult, classify_upload_api

router = APIRouter(prefix="/api/v1", tags=["review"])


# ---------------------------------------------------------------- response and request models


class ItemOut(ReviewItemPublic):
    """A review item; ``version`` must be sent back with a decision."""

    snapshot_url: str = Field(description="the JPEG, served by this API")


class ItemPage(BaseModel):
    items: list[ItemOut]
    older: int | None = Field(None, description="pass as `before` for the next, older page")
    newer: int | None = Field(None, description="pass as `after` for the previous, newer page")


class ItemDetail(ItemOut):
    history: list[ReviewDecisionPublic] = Field(description="every decision and undo, oldest first")


class DecisionIn(BaseModel):
    action: Literal["approve", "reject", "relabel"]
    label: str | None = Field(None, description="the correct label; required for relabel only")
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)
    version: int | None = Field(
        None, ge=0, description="the item version you looked at; without it only a pending item can be decided"
    )


class UndoIn(BaseModel):
    version: int | None = Field(None, ge=0, description="the item version you looked at")
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class DecisionOut(BaseModel):
    item: ItemOut
    decision: ReviewDecisionPublic


class ConflictOut(BaseModel):
    detail: str
    current: ItemOut = Field(description="the item as it is now")


class BulkEntry(BaseModel):
    id: int
    version: int | None = Field(None, ge=0)


class BulkIn(BaseModel):
    items: list[BulkEntry] = Field(min_length=1, max_length=MAX_PAGE)
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class BulkOut(BaseModel):
    decided: list[ItemOut]
    conflicts: list[ItemOut] = Field(description="items that changed since their version; left as they are")
    missing: list[int]


class PrecisionOut(BaseModel):
    site_id: str
    camera_id: str
    label: str
    reviewed: int
    approved: int
    rejected: int
    relabelled: int
    precision: float | None = Field(description="approved / reviewed, over items queued as positives")


class StatsOut(BaseModel):
    pending: int
    by_status: dict[str, int]
    decisions_by_reviewer: dict[str, dict[str, int]]
    precision: list[PrecisionOut]


class CameraOut(BaseModel):
    id: str
    site_id: str
    name: str
    url: str = Field(description="URL or path with credentials masked")
    enabled: bool
    up: bool | None = Field(None, description="null when this process does not sample the camera")
    last_frame_at: datetime | None = None
    last_error: str | None = None
    reconnects: int | None = None


# ---------------------------------------------------------------- helpers


def item_out(item: ReviewItem) -> ItemOut:
    data = ReviewItemPublic.model_validate(item).model_dump()
    return ItemOut(**data, snapshot_url=f"/api/v1/items/{item.id}/snapshot")


def conflict_response(conflict: DecisionConflict) -> JSONResponse:
    body = ConflictOut(detail=str(conflict), current=item_out(conflict.current))
    return JSONResponse(body.model_dump(mode="json"), status_code=status.HTTP_409_CONFLICT)


def not_found(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


CONFLICT = {409: {"model": ConflictOut, "description": "the item changed since `version`; nothing was changed"}}
Auth = Annotated[Identity, Depends(api_user)]
Ctx = Annotated[WebContext, Depends(get_ctx)]


# ---------------------------------------------------------------- endpoints


@router.get("/items", response_model=ItemPage, summary="List review items, newest first (keyset paging)")
def list_review_items(
    ctx: Ctx,
    _identity: Auth,
    status_: Annotated[ReviewStatus | None, Query(alias="status")] = None,
    site: str | None = None,
    camera: str | None = None,
    label: str | None = None,
    reason: QueueReason | None = None,
    since: Annotated[datetime | None, Query(description="captured at or after (ISO 8601 with offset)")] = None,
    until: Annotated[datetime | None, Query(description="captured before (ISO 8601 with offset)")] = None,
    before: Annotated[int | None, Query(description="the `older` key of the previous page")] = None,
    after: Annotated[int | None, Query(description="the `newer` key of the next page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> ItemPage:
    try:
        filters = Filters(
            status=status_.value if status_ else None, site_id=site, camera_id=camera, label=label,
            reason=reason.value if reason else None, since=since, until=until,
        )
        with ctx.session() as session:
            page = page_items(session=session, filters=filters, limit=limit, before_id=before, after_id=after)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return ItemPage(items=[item_out(i) for i in page.items], older=page.older, newer=page.newer)


@router.get("/items/{item_id}", response_model=ItemDetail, responses={404: {}}, summary="One item with its history")
def get_review_item(item_id: int, ctx: Ctx, _identity: Auth) -> ItemDetail:
    with ctx.session() as session:
        try:
            item = get_item_or_raise(item_id, session=session)
        except ItemNotFound as exc:
            raise not_found(exc) from None
        decisions = history(item_id, session=session)
    return ItemDetail(
        **item_out(item).model_dump(),
        history=[ReviewDecisionPublic.model_validate(d) for d in decisions],
    )


@router.post(
    "/items/{item_id}/decision", response_model=DecisionOut, responses={**CONFLICT, 404: {}},
    summary="Approve, reject or relabel an item",
)
def decide_item(item_id: int, body: DecisionIn, ctx: Ctx, identity: Auth) -> Any:
    with ctx.session() as session:
        try:
            item, decision = decide(
                item_id, session=session, reviewer=identity.user, action=body.action, label=body.label,
                note=body.note, expected_version=body.version, allowed_labels=ctx.labels, now=ctx.clock(),
            )
        except ItemNotFound as exc:
            raise not_found(exc) from None
        except DecisionConflict as conflict:
            return conflict_response(conflict)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return DecisionOut(item=item_out(item), decision=ReviewDecisionPublic.model_validate(decision))


@router.post(
    "/items/{item_id}/undo", response_model=DecisionOut, responses={**CONFLICT, 404: {}},
    summary="Undo the item's latest decision still in effect",
)
def undo_item(item_id: int, body: UndoIn, ctx: Ctx, identity: Auth) -> Any:
    with ctx.session() as session:
        try:
            item, decision = undo(item_id, session=session, reviewer=identity.user, expected_version=body.version,
                                  note=body.note, now=ctx.clock())
        except ItemNotFound as exc:
            raise not_found(exc) from None
        except DecisionConflict as conflict:
            return conflict_response(conflict)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return DecisionOut(item=item_out(item), decision=ReviewDecisionPublic.model_validate(decision))


@router.post("/items/bulk-approve", response_model=BulkOut, summary="Approve several items, each checked on its own")
def bulk_approve(body: BulkIn, ctx: Ctx, identity: Auth) -> BulkOut:
    with ctx.session() as session:
        try:
            result = approve_many(((e.id, e.version) for e in body.items), session=session,
                                  reviewer=identity.user, note=body.note, now=ctx.clock())
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return BulkOut(decided=[item_out(i) for i in result.decided], conflicts=[item_out(i) for i in result.conflicts],
                   missing=result.missing)


@router.get("/items/{item_id}/snapshot", response_class=FileResponse, responses={404: {}},
            summary="The item's JPEG")
def item_snapshot(item_id: int, ctx: Ctx, _identity: Auth) -> FileResponse:
    with ctx.session() as session:
        try:
            item = get_item_or_raise(item_id, session=session)
        except ItemNotFound as exc:
            raise not_found(exc) from None
    try:
        path = ctx.snapshots.resolve(item.snapshot)
    except SnapshotNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the snapshot of item {item_id} is missing") from None
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/stats", response_model=StatsOut, summary="Pending count, decisions per reviewer, reviewed precision")
def stats(ctx: Ctx, _identity: Auth) -> StatsOut:
    with ctx.session() as session:
        result = review_stats(session=session)
    return StatsOut(
        pending=result.pending, by_status=result.by_status, decisions_by_reviewer=result.decisions_by_reviewer,
        precision=[PrecisionOut(**vars(row), precision=row.precision) for row in result.precision],
    )


@router.get("/cameras", response_model=list[CameraOut], summary="Cameras with their live status")
def cameras(ctx: Ctx, _identity: Auth) -> list[CameraOut]:
    return camera_rows(ctx)


@router.post("/classify", response_model=ClassifyResult, responses={413: {}, 415: {}, 503: {}},
             summary="Classify an uploaded image")
async def classify(result: Annotated[ClassifyResult, Depends(classify_upload_api)]) -> ClassifyResult:
    return result


def camera_rows(ctx: WebContext) -> list[CameraOut]:
    """Every camera from the database, with its live status when this process samples it."""
    from sqlmodel import col, select

    with ctx.session() as session:
        rows = session.exec(select(Camera).order_by(col(Camera.site_id), col(Camera.id))).all()
    out = []
    for camera in rows:
        live = (ctx.sources or {}).get(camera.id)
        source = live[1] if live is not None else None
        out.append(CameraOut(
            id=camera.id, site_id=camera.site_id, name=camera.name, url=redact_url(camera.url_display),
            enabled=camera.enabled,
            up=source.up if source is not None else None,
            last_frame_at=source.last_frame_at if source is not None else None,
            last_error=redact_text(source.last_error) if source is not None and source.last_error else None,
            reconnects=source.reconnects if source is not None else None,
        ))
    return out
