"""Who is asking: session cookies, API tokens and CSRF checks for the web app.

Responsible for turning a request into an :class:`Identity` (or refusing it):

* browsers sign in with a password and get a random session cookie (HttpOnly,
  SameSite=Lax, Secure when ``web.secure_cookies``); the session row holds a CSRF
  token that every state-changing request made with the cookie must echo, in the
  ``csrf_token`` form field or the ``X-CSRF-Token`` header (synchronizer-token pattern);
* scripts send ``Authorization: Bearer <token>``; a bearer token is never sent by a
  browser on its own, so such requests need no CSRF token;
* the sign-in form itself is protected by a double-submit cookie, so another site
  cannot sign a browser in to an account of its choosing.

Order of refusals: no identity -> 401, then a missing or wrong CSRF token -> 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Response, status

from monitor.auth import new_secret, same_secret
from monitor.store.tables import User, WebSession
from monitor.store.users import resolve_web_session, user_for_api_token
from monitor.web.context import WebContext, get_ctx

SESSION_COOKIE = "monitor_session"
LOGIN_CSRF_COOKIE = "monitor_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Identity:
    """A signed-in user and how they signed in.

    Attributes:
        user: the user.
        web_session: the browser session, or None for an API token.
    """

    user: User
    web_session: WebSession | None = None

    @property
    def csrf_token(self) -> str:
        return self.web_session.csrf_token if self.web_session is not None else ""

    @property
    def by_cookie(self) -> bool:
        return self.web_session is not None


class NotSignedIn(Exception):
    """Raised by page dependencies; the app turns it into a redirect to the sign-in page
    (GET) or a 401 page (anything else)."""


def identify(request: Request, ctx: WebContext = Depends(get_ctx)) -> Identity | None:
    """The identity behind a request's bearer token or session cookie, or None.

    Cached on the request, so several dependencies cost one lookup.
    """
    if hasattr(request.state, "identity"):
        return request.state.identity
    identity: Identity | None = None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    with ctx.session() as session:
        if scheme.lower() == "bearer" and token.strip():
            user = user_for_api_token(token.strip(), session=session)
            identity = Identity(user) if user is not None else None
        else:
            cookie = request.cookies.get(SESSION_COOKIE, "")
            found = resolve_web_session(cookie, session=session, now=ctx.clock()) if cookie else None
            identity = Identity(found[1], found[0]) if found is not None else None
    request.state.identity = identity
    return identity


def api_user(request: Request, identity: Identity | None = Depends(identify)) -> Identity:
    """A FastAPI dependency for the JSON API: 401 without an identity; 403 when a
    state-changing request made with the session cookie lacks the CSRF header."""
    if identity is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "sign in, or send an API token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if identity.by_cookie and request.method not in SAFE_METHODS:
        if not same_secret(request.headers.get(CSRF_HEADER), identity.csrf_token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
    return identity


def page_user(identity: Identity | None = Depends(identify)) -> Identity:
    """A FastAPI dependency for pages: the signed-in user, else :class:`NotSignedIn`."""
    if identity is None or not identity.by_cookie:
        raise NotSignedIn()
    return identity


async def page_form_user(request: Request, identity: Identity = Depends(page_user)) -> Identity:
    """A FastAPI dependency for form posts: the signed-in user whose form carries the
    session's CSRF token (403 otherwise)."""
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    if not isinstance(submitted, str) or not same_secret(submitted, identity.csrf_token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or wrong; reload the page")
    return identity


def set_session_cookie(response: Response, value: str, ctx: WebContext) -> None:
    """Attach the session cookie: HttpOnly (no script can read it), SameSite=Lax (not
    sent on cross-site posts), Secure when configured."""
    response.set_cookie(
        SESSION_COOKIE, value, max_age=int(ctx.session_lifetime.total_seconds()), path="/",
        httponly=True, samesite="lax", secure=ctx.secure_cookies,
    )


def clear_session_cookie(response: Response, ctx: WebContext) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=ctx.secure_cookies)


def login_csrf(request: Request) -> str:
    """The double-submit token of the sign-in form: the cookie's value, or a new one."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or new_secret()


def set_login_csrf_cookie(response: Response, value: str, ctx: WebContext) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, value, max_age=3600, path="/login", httponly=True, samesite="strict",
        secure=ctx.secure_cookies,
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/queue"
    return target
