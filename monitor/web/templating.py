"""The Jinja2 environment for the server-rendered pages.

Responsible for one rule above all: every value is HTML-escaped (``autoescape=True`` for
every template, not only ``.html`` ones), so camera names, notes and labels written by
people or taken from a config are shown as text, never run as markup or script.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import jinja2
from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

if TYPE_CHECKING:
    from monitor.web.auth import Identity

TEMPLATE_DIR = Path(__file__).parent / "templates"
FLASH_COOKIE = "monitor_flash"


def format_time(moment: datetime | None) -> str:
    """UTC time to the second, e.g. ``2026-07-01 12:05:09 UTC``; an em dash for None."""
    if moment is None:
        return "—"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails a test, not silently renders ""
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = format_time
    env.filters["percent"] = format_percent
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request,
    template: str,
    identity: Identity | None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """Render a page with what every page shows: the user, the CSRF token for its forms,
    the relabel classes and a one-time message left by the previous redirect.

    Args:
        request: the request.
        template: a file under templates/.
        identity: who is signed in, or None.
        status_code: the HTTP status.
        headers: extra response headers.
        **context: the template's own values.
    """
    labels = request.app.state.ctx.labels
    flash = unquote(request.cookies.get(FLASH_COOKIE, ""))[:300]
    response = templates.TemplateResponse(
        request, template,
        {
            "user": identity.user if identity else None,
            "csrf": identity.csrf_token if identity else "",
            "labels": labels,
            "flash": flash,
            "error": "",
            **context,
        },
        status_code=status_code,
        headers=headers,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response
