"""Rollout status and history on a web page, and promote / rollback in the JSON API.

Thin routes over the control plane (``rollout.status`` and ``rollout.promote``): the same
numbers `rollout status` prints. Changing a stage needs an authenticated user, whose name
goes into the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from monitor.web.api import Auth, Ctx
from monitor.web.pages import PageUser
from monitor.web.templating import render
from rollout.promote import (
    GatesNotPassed,
    RolloutContext,
    RolloutError,
    RolloutUsageError,
    StageConflict,
    UnknownSite,
    promote,
    rollback,
)
from rollout.status import all_statuses, site_history, site_status

api_router = APIRouter(prefix="/api/v1/rollout", tags=["rollout"])
page_router = APIRouter(include_in_schema=False)


class PromoteIn(BaseModel):
    force: bool = Field(False, description="promote although gates did not pass (needs a reason)")
    reason: str | None = Field(None, max_length=2000, description="why; kept in the audit log")


class RollbackIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="why; kept in the audit log")


def _rollout_context(ctx) -> RolloutContext:
    from monitor.store.observe import drift_flag_provider

    return RolloutContext.from_config(ctx.config, drift_flags=drift_flag_provider(ctx.engine))


def _transition_out(transition) -> dict[str, Any]:
    return {
        "site_id": transition.site_id, "from": transition.from_stage.value, "to": transition.to_stage.value,
        "at": transition.at.isoformat(), "actor": transition.actor, "forced": transition.forced,
        "event_id": transition.event_id, "reason": transition.reason,
        "gates": transition.report.to_evidence() if transition.report else None,
    }


def _refusal(exc: RolloutError) -> Response:
    if isinstance(exc, RolloutUsageError):
        code = status.HTTP_404_NOT_FOUND if isinstance(exc, UnknownSite) else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, str(exc))
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, GatesNotPassed):
        body["gates"] = exc.report.to_evidence()
    return JSONResponse(body, status_code=status.HTTP_409_CONFLICT)


@api_router.get("", summary="Every site's stage and gates, with their numbers")
def rollout_statuses(ctx: Ctx, identity: Auth) -> list[dict[str, Any]]:
    with ctx.session() as session:
        return [s.to_dict() for s in all_statuses(session=session, ctx=_rollout_context(ctx))]


@api_router.get("/{site_id}", summary="One site's stage and gates")
def rollout_status(site_id: str, ctx: Ctx, identity: Auth) -> Any:
    with ctx.session() as session:
        try:
            return site_status(site_id, session=session, ctx=_rollout_context(ctx)).to_dict()
        except RolloutError as exc:
            return _refusal(exc)


@api_router.get("/{site_id}/history", summary="A site's audit log, newest first")
def rollout_history(site_id: str, ctx: Ctx, identity: Auth, limit: int = 100) -> Any:
    with ctx.session() as session:
        try:
            events = site_history(site_id, session=session, ctx=_rollout_context(ctx), limit=min(limit, 1000))
        except RolloutError as exc:
            return _refusal(exc)
        return [event.model_dump(mode="json") for event in events]


@api_router.post("/{site_id}/promote", summary="Promote one stage when the gates pass (409 with them when not)")
def rollout_promote(site_id: str, body: PromoteIn, ctx: Ctx, identity: Auth) -> Any:
    with ctx.session() as session:
        try:
            transition = promote(site_id, session=session, ctx=_rollout_context(ctx), actor=identity.user.name,
                                 force=body.force, reason=body.reason)
        except (GatesNotPassed, StageConflict, RolloutError) as exc:
            return _refusal(exc)
    return _transition_out(transition)


@api_router.post("/{site_id}/rollback", summary="Roll back one stage, with a reason")
def rollout_rollback(site_id: str, body: RollbackIn, ctx: Ctx, identity: Auth) -> Any:
    with ctx.session() as session:
        try:
            transition = rollback(site_id, session=session, ctx=_rollout_context(ctx), actor=identity.user.name,
                                  reason=body.reason)
        except RolloutError as exc:
            return _refusal(exc)
    return _transition_out(transition)


@page_router.get("/rollout")
def rollout_page(request: Request, ctx: Ctx, identity: PageUser) -> Response:
    rollout_ctx = _rollout_context(ctx)
    with ctx.session() as session:
        statuses = all_statuses(session=session, ctx=rollout_ctx)
        histories = {s.site_id: site_history(s.site_id, session=session, ctx=rollout_ctx, limit=10) for s in statuses}
    return render(request, "rollout.html", identity, statuses=statuses, histories=histories)
