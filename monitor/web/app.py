"""The FastAPI application: review pages, the JSON API, /metrics, static files.

Responsible for assembling the app from what it is given (:func:`create_web_app`), with
no module-level engine or registry, and for what applies to every response: security
headers (a strict Content-Security-Policy, so even an escaping bug could not run an
injected script), the sign-in redirect for pages, and /metrics readable without a user
so Prometheus can scrape it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.config import MonitorConfig
from monitor.model.base import Classifier
from monitor.store import SnapshotStore
from monitor.store.tables import utcnow
from monitor.types import SourceStatus
from monitor.web import api, overview, pages, rollout_routes
from monitor.web.auth import NotSignedIn
from monitor.web.context import WebContext
from monitor.web.templating import render

STATIC_DIR = Path(__file__).parent / "static"
API_DOCS = "/api/v1/docs"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_web_app(
    *,
    engine: Engine,
    snapshots: SnapshotStore,
    registry: CollectorRegistry,
    config: MonitorConfig,
    classifier: Classifier | None = None,
    sources: Mapping[str, tuple[str, SourceStatus]] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """Build the review web app.

    Args:
        engine: the store's database (tables already created).
        snapshots: the snapshot JPEGs.
        registry: served as /metrics.
        config: the validated config (``web`` settings, alert labels).
        classifier: the model for the classify page; None disables classifying.
        sources: camera id -> (site id, live status) when this process samples cameras.
        clock: the current UTC time, for tests.

    Returns:
        The ASGI app; serve it with :class:`monitor.web.server.WebServer` or uvicorn.
    """
    app = FastAPI(
        title="bear-monitor review API",
        version="1",
        description="Review queue: list items, decide (approve, reject, relabel), undo, stats. "
        "Sign in through the web UI (session cookie + X-CSRF-Token header) or send "
        "'Authorization: Bearer <token>' (`monitor token create`).",
        docs_url=API_DOCS,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.ctx = WebContext(
        engine=engine, snapshots=snapshots, registry=registry, config=config, classifier=classifier,
        sources=sources, clock=clock,
    )
    app.include_router(api.router)
    app.include_router(rollout_routes.api_router)
    app.include_router(pages.router)
    app.include_router(rollout_routes.page_router)
    app.include_router(overview.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        # The docs page loads Swagger UI from a CDN with an inline script; everything
        # else is served by us and needs neither.
        if not request.url.path.startswith(API_DOCS):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            from urllib.parse import quote

            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return render(request, "error.html", None, status_code=401, status=401, message="Sign in first.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/metrics":
            from fastapi.exception_handlers import http_exception_handler

            return await http_exception_handler(request, exc)
        identity = getattr(request.state, "identity", None)
        return render(request, "error.html", identity, status_code=exc.status_code,
                      headers=getattr(exc, "headers", None), status=exc.status_code, message=str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        from fastapi.exception_handlers import request_validation_exception_handler

        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        return HTMLResponse(f"bad request: {len(exc.errors())} invalid field(s)", status_code=422)

    return app

