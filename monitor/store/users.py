"""Reviewers, their browser sessions and their API tokens.

Responsible for every read and write on the ``users``, ``web_sessions`` and
``api_tokens`` tables. Passwords go through :mod:`monitor.auth` (argon2id); session
cookies and API tokens are random and only their SHA-256 is stored. Like the other
query modules, functions take the session as a keyword and writers commit.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from monitor.auth import (
    dummy_hash,
    hash_password,
    hash_secret,
    needs_rehash,
    new_api_token,
    new_secret,
    verify_password,
)
from monitor.store.tables import ApiToken, User, WebSession, utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class UserExistsError(ValueError):
    """A user with that name already exists."""


class UnknownUserError(LookupError):
    """No user with that name."""


def check_user_name(name: str) -> str:
    """Return ``name`` if it can be a user name.

    Raises:
        ValueError: it is empty, too long or has characters other than letters, digits,
            '_', '.', '@', '-'.
    """
    if not _NAME.match(name or ""):
        raise ValueError(
            f"user name {name!r} is not allowed; use letters, digits, '_', '.', '@', '-' (at most 64)"
        )
    return name


def create_user(name: str, password: str, *, session: Session) -> User:
    """Add a reviewer, then commit.

    Args:
        name: sign-in name (see :func:`check_user_name`).
        password: plain password; only its argon2id hash is stored.
        session: an open session.

    Returns:
        The new user.

    Raises:
        ValueError: a bad name; ``PasswordPolicyError`` for a too short or long password.
        UserExistsError: the name is taken.
    """
    check_user_name(name)
    user = User(name=name, password_hash=hash_password(password))
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise UserExistsError(f"user {name!r} already exists") from None
    return user


def set_password(name: str, password: str, *, session: Session) -> User:
    """Give a user a new password and end their browser sessions, then commit.

    Raises:
        UnknownUserError: no such user.
        PasswordPolicyError: the password is too short or too long.
    """
    user = get_user(name, session=session)
    if user is None:
        raise UnknownUserError(f"no user {name!r}")
    user.password_hash = hash_password(password)
    session.add(user)
    session.execute(delete(WebSession).where(col(WebSession.user_id) == user.id))
    session.commit()
    return user


def get_user(name: str, *, session: Session) -> User | None:
    """The user with that name, or None."""
    return session.exec(select(User).where(col(User.name) == name)).first()


def list_users(*, session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.exec(select(User).order_by(col(User.name))).all())


def authenticate(name: str, password: str, *, session: Session) -> User | None:
    """The enabled user whose password this is, or None (commits a rehash when due).

    An unknown name costs one password verification too, so the time taken does not
    reveal which names exist.
    """
    user = get_user(name, session=session) if _NAME.match(name or "") else None
    if user is None:
        verify_password(dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password) or user.disabled:
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        session.add(user)
        session.commit()
    return user


def start_web_session(user: User, *, session: Session, lifetime: timedelta, now: datetime | None = None) -> tuple[str, WebSession]:
    """Create a browser session for a signed-in user, then commit.

    Expired sessions of every user are deleted on the way, so the table stays small.

    Args:
        user: from :func:`authenticate`.
        session: an open session.
        lifetime: how long the session lasts.
        now: the current time (for tests).

    Returns:
        (the cookie value, the stored row with its CSRF token).
    """
    now = now or utcnow()
    session.execute(delete(WebSession).where(col(WebSession.expires_at) <= now))
    cookie = new_secret()
    row = WebSession(
        token_hash=hash_secret(cookie), user_id=int(user.id or 0), csrf_token=new_secret(),
        created_at=now, expires_at=now + lifetime,
    )
    session.add(row)
    session.commit()
    return cookie, row


def resolve_web_session(cookie: str, *, session: Session, now: datetime | None = None) -> tuple[WebSession, User] | None:
    """The live session and enabled user behind a cookie value, or None."""
    if not cookie:
        return None
    now = now or utcnow()
    row = session.get(WebSession, hash_secret(cookie))
    if row is None or row.expires_at <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return row, user


def end_web_session(cookie: str, *, session: Session) -> None:
    """Sign a browser out (delete its session), then commit; unknown cookies are ignored."""
    if cookie:
        session.execute(delete(WebSession).where(col(WebSession.token_hash) == hash_secret(cookie)))
        session.commit()


def create_api_token(user_name: str, *, session: Session, name: str = "") -> tuple[str, ApiToken]:
    """Issue an API token for a user, then commit.

    Args:
        user_name: the user the token acts as.
        session: an open session.
        name: what the token is for (shown by ``monitor token list``).

    Returns:
        (the token, shown once and never stored; the stored row).

    Raises:
        UnknownUserError: no such user.
    """
    user = get_user(user_name, session=session)
    if user is None:
        raise UnknownUserError(f"no user {user_name!r}")
    token = new_api_token()
    row = ApiToken(user_id=int(user.id or 0), name=name, token_hash=hash_secret(token))
    session.add(row)
    session.commit()
    return token, row


def revoke_api_token(token_id: int, *, session: Session, now: datetime | None = None) -> bool:
    """Revoke a token by id, then commit.

    Returns:
        True when a live token was revoked, False when there was none.
    """
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now or utcnow()
    session.add(row)
    session.commit()
    return True


def list_api_tokens(*, session: Session) -> list[tuple[ApiToken, str]]:
    """Every token with its user's name, oldest first."""
    rows = session.exec(
        select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id)).order_by(col(ApiToken.id))
    ).all()
    return [(token, user_name) for token, user_name in rows]


def user_for_api_token(token: str, *, session: Session) -> User | None:
    """The enabled user a live API token acts as, or None."""
    if not token:
        return None
    row = session.exec(select(ApiToken).where(col(ApiToken.token_hash) == hash_secret(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return user
