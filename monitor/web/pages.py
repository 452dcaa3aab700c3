"""Server-rendered pages: sign-in, the queue, item detail, classify, cameras, stats.

Responsible for HTTP and HTML concerns only; the queries and rules live in
:mod:`monitor.store.reviews` and :mod:`monitor.store.users`. Pages need a signed-in
browser (GET redirects to the sign-in page, anything else gets 401); every form post
must carry the session's CSRF token (403). Forms work without JavaScript; the queue's
keyboard shortcuts (``static/queue.js``) use the JSON API with the same session.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlmodel import Session, select

from monitor.auth import same_secret
from monitor.store import SnapshotNotFound, StoreError
from monitor.store.reviews import (
    MAX_PAGE,
    DecisionConflict,
    Filters,
    ItemNotFound,
    approve_many,
    count_capped,
    decide,
    get_item_or_raise,
    history,
    neighbours,
    page_items,
    review_stats,
    undo,
)
from monitor.store.tables import Camera, ReviewStatus, Site
from monitor.store.users import authenticate, end_web_session, start_web_session
from monitor.types import QueueReason
from monitor.web.api import camera_rows
from monitor.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Identity,
    clear_session_cookie,
    identify,
    login_csrf,
    page_form_user,
    page_user,
    safe_next,
    set_login_csrf_cookie,
    set_session_cookie,
)
from monitor.web.classify import classify_image, read_upload
from monitor.web.context import WebContext, get_ctx
from monitor.web.templating import FLASH_COOKIE, render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 24
Ctx = Annotated[WebContext, Depends(get_ctx)]
PageUser = Annotated[Identity, Depends(page_user)]
FormUser = Annotated[Identity, Depends(page_form_user)]


def redirect(target: str, *, flash: str = "") -> RedirectResponse:
    """A 303 redirect (POST -> GET), optionally carrying a one-time message."""
    response = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    if flash:
        response.set_cookie(FLASH_COOKIE, quote(flash[:300]), max_age=60, path="/", httponly=True, samesite="lax")
    return response


def _names(session: Session) -> tuple[dict[str, str], dict[str, str]]:
    sites = {s.id: s.name for s in session.exec(select(Site)).all()}
    cameras = {c.id: c.name for c in session.exec(select(Camera)).all()}
    return sites, cameras


def _parse_time(value: str, field: str) -> datetime | None:
    """A ``datetime-local`` value (or ISO 8601), read as UTC when it has no offset."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not a date and time like 2026-07-01T12:00") from None
    return moment.replace(tzinfo=timezone.utc) if moment.utcoffset() is None else moment


# ---------------------------------------------------------------- sign-in


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/queue", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/login")
def login_page(request: Request, ctx: Ctx, identity: Annotated[Identity | None, Depends(identify)],
               next: str = "/queue") -> Response:
    if identity is not None and identity.by_cookie:
        return redirect(safe_next(next))
    token = login_csrf(request)
    response = render(request, "login.html", None, login_csrf=token, next=safe_next(next), username="")
    set_login_csrf_cookie(response, token, ctx)
    return response


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/queue",
) -> Response:
    if not same_secret(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the sign-in form expired or came from another site; reload it")
    with ctx.session() as session:
        user = authenticate(username, password, session=session)
        if user is None:
            response = render(request, "login.html", None, status_code=status.HTTP_401_UNAUTHORIZED,
                              login_csrf=csrf_token, next=safe_next(next), username=username,
                              error="Wrong name or password.")
            return response
        cookie, _ = start_web_session(user, session=session, lifetime=ctx.session_lifetime, now=ctx.clock())
    response = redirect(safe_next(next))
    set_session_cookie(response, cookie, ctx)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx, _identity: FormUser) -> Response:
    with ctx.session() as session:
        end_web_session(request.cookies.get(SESSION_COOKIE, ""), session=session)
    response = redirect("/login", flash="Signed out.")
    clear_session_cookie(response, ctx)
    return response


# ---------------------------------------------------------------- queue


@router.get("/queue")
def queue_page(
    request: Request,
    ctx: Ctx,
    identity: PageUser,
    site: str = "",
    camera: str = "",
    label: str = "",
    reason: str = "",
    since: str = "",
    until: str = "",
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> Response:
    # "status" would shadow fastapi.status as a parameter name; read it directly.
    status_ = request.query_params.get("status", "pending")
    query = {"status": status_, "site": site, "camera": camera, "label": label, "reason": reason,
             "since": since, "until": until}
    error = ""
    page = None
    count, more = 0, False
    with ctx.session() as session:
        sites, cameras = _names(session)
        try:
            filters = Filters(
                status=None if status_ in ("", "all") else status_, site_id=site or None, camera_id=camera or None,
                label=label or None, reason=reason or None, since=_parse_time(since, "since"),
                until=_parse_time(until, "until"),
            )
            page = page_items(session=session, filters=filters, limit=max(1, min(limit, MAX_PAGE)),
                              before_id=before, after_id=after if before is None else None)
            count, more = count_capped(session=session, filters=filters)
        except ValueError as exc:
            error = str(exc)
    kept = {k: v for k, v in query.items() if v}
    return render(
        request, "queue.html", identity, status_code=200 if not error else 422,
        page=page, count=count, more=more, query=query, sites=sites, cameras=cameras, error=error,
        statuses=[s.value for s in ReviewStatus], reasons=[r.value for r in QueueReason],
        older_url=f"/queue?{urlencode({**kept, 'before': page.older})}" if page and page.older else "",
        newer_url=f"/queue?{urlencode({**kept, 'after': page.newer})}" if page and page.newer else "",
        return_to=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    )


@router.post("/queue/bulk-approve")
async def bulk_approve_form(request: Request, ctx: Ctx, identity: FormUser) -> Response:
    form = await request.form()
    entries: list[tuple[int, int | None]] = []
    for value in form.getlist("item"):
        item_id, _, version = str(value).partition(":")
        try:
            entries.append((int(item_id), int(version) if version else None))
        except ValueError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"bad item {value!r}") from None
    return_to = safe_next(str(form.get("return_to") or "/queue"))
    if not entries:
        return redirect(return_to, flash="Select items first (x toggles the current card).")

    def work() -> Any:
        with ctx.session() as session:
            return approve_many(entries, session=session, reviewer=identity.user, now=ctx.clock())

    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(work)
    message = f"Approved {len(result.decided)}."
    if result.conflicts:
        message += f" {len(result.conflicts)} changed since you loaded the page and were left as they are."
    if result.missing:
        message += f" {len(result.missing)} no longer exist."
    return redirect(return_to, flash=message)


# ---------------------------------------------------------------- item detail


def _item_page(request: Request, ctx: WebContext, identity: Identity, item_id: int, *, status_code: int = 200,
               error: str = "") -> Response:
    with ctx.session() as session:
        try:
            item = get_item_or_raise(item_id, session=session)
        except ItemNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        decisions = history(item_id, session=session)
        sites, cameras = _names(session)
        newer, older = neighbours(item_id, session=session)
    probabilities = sorted(item.probabilities.items(), key=lambda kv: -kv[1])
    return render(request, "item.html", identity, status_code=status_code, item=item, history=decisions,
                  probabilities=probabilities, sites=sites, cameras=cameras, error=error,
                  newer_id=newer, older_id=older, image_size=_snapshot_size(ctx, item))


def _snapshot_size(ctx: WebContext, item) -> tuple[int, int] | None:
    """(width, height) of an item's JPEG, to outline the crop that fired; header read only."""
    if not item.crop:
        return None
    from PIL import Image

    try:
        with Image.open(ctx.snapshots.resolve(item.snapshot)) as image:
            return image.size
    except (OSError, StoreError):
        return None


@router.get("/items/{item_id}")
def item_page(item_id: int, request: Request, ctx: Ctx, identity: PageUser) -> Response:
    return _item_page(request, ctx, identity, item_id)


@router.post("/items/{item_id}/decide")
def decide_form(
    item_id: int,
    request: Request,
    ctx: Ctx,
    identity: FormUser,
    action: Annotated[str, Form()],
    version: Annotated[int | None, Form()] = None,
    label: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    with ctx.session() as session:
        try:
            decide(item_id, session=session, reviewer=identity.user, action=action,
                   label=(label or None) if action == "relabel" else None, note=note or None,
                   expected_version=version, allowed_labels=ctx.labels, now=ctx.clock())
        except ItemNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except DecisionConflict as conflict:
            current = conflict.current
            return _item_page(request, ctx, identity, item_id, status_code=status.HTTP_409_CONFLICT,
                              error=f"Not saved: this item changed since you loaded it; it is now "
                                    f"{current.status} (version {current.version}). Look again and decide.")
        except ValueError as exc:
            return _item_page(request, ctx, identity, item_id, status_code=422, error=str(exc))
    return redirect(f"/items/{item_id}", flash=f"Saved: {action}.")


@router.post("/items/{item_id}/undo")
def undo_form(
    item_id: int,
    request: Request,
    ctx: Ctx,
    identity: FormUser,
    version: Annotated[int | None, Form()] = None,
) -> Response:
    with ctx.session() as session:
        try:
            undo(item_id, session=session, reviewer=identity.user, expected_version=version, now=ctx.clock())
        except ItemNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except DecisionConflict as conflict:
            return _item_page(request, ctx, identity, item_id, status_code=status.HTTP_409_CONFLICT,
                              error=f"Not undone: {conflict}.")
    return redirect(f"/items/{item_id}", flash="Undone.")


@router.get("/snapshots/{relative:path}")
def snapshot_file(relative: str, ctx: Ctx, _identity: PageUser) -> Response:
    try:
        path = ctx.snapshots.resolve(relative)
    except SnapshotNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such snapshot") from None
    # Snapshots never change once written, so the browser may keep them.
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


# ---------------------------------------------------------------- classify, cameras, stats


@router.get("/classify")
def classify_page(request: Request, ctx: Ctx, identity: PageUser) -> Response:
    return render(request, "classify.html", identity, result=None, model=ctx.classifier is not None)


@router.post("/classify")
async def classify_form(
    request: Request, ctx: Ctx, identity: FormUser, image: Annotated[UploadFile, File()]
) -> Response:
    try:
        array = await read_upload(image, max_bytes=ctx.config.web.max_upload_bytes)
        result = await classify_image(ctx, array)
    except HTTPException as exc:
        return render(request, "classify.html", identity, status_code=exc.status_code, result=None,
                      model=ctx.classifier is not None, error=str(exc.detail))
    return render(request, "classify.html", identity, result=result, model=True, filename=image.filename or "")


@router.get("/cameras")
def cameras_page(request: Request, ctx: Ctx, identity: PageUser) -> Response:
    return render(request, "cameras.html", identity, cameras=camera_rows(ctx), live=ctx.sources is not None)


@router.get("/stats")
def stats_page(request: Request, ctx: Ctx, identity: PageUser) -> Response:
    with ctx.session() as session:
        stats = review_stats(session=session)
    return render(request, "stats.html", identity, stats=stats)
