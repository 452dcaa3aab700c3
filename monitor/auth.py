"""Credentials: password hashing, random secrets and their hashes.

Responsible for the cryptography behind reviewers signing in, kept apart from the web
layer so the CLI (``monitor user add``) and the web app hash the same way:

* passwords are hashed with argon2id (``argon2-cffi``, its default RFC 9106 "low memory"
  parameters); hashes made with older parameters are upgraded on the next sign-in;
* session cookies, CSRF tokens and API tokens are 256-bit random strings from
  :mod:`secrets`; only their SHA-256 is stored, so a copy of the database is not a
  key to the application.

Nothing here logs or returns a password or a token except to the caller who asked.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8
# argon2 hashes whatever it is given; a cap keeps a huge form post from costing seconds.
MAX_PASSWORD_LENGTH = 1024
API_TOKEN_PREFIX = "mon_"

_hasher = PasswordHasher()


class PasswordPolicyError(ValueError):
    """A password that is too short or too long; the message says the limits."""


def check_password_policy(password: str) -> None:
    """Refuse passwords that are too short or too long.

    Raises:
        PasswordPolicyError: with the accepted length range.
    """
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"a password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long"
        )


def hash_password(password: str) -> str:
    """Hash a password with argon2id (a random salt per hash).

    Raises:
        PasswordPolicyError: the password breaks :func:`check_password_policy`.
    """
    check_password_policy(password)
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False for a malformed hash."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's defaults."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@functools.lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so that a sign-in for an
    unknown name takes as long as one for a known name (no user enumeration by timing)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def new_secret() -> str:
    """A 256-bit URL-safe random string (session cookies, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def new_api_token() -> str:
    """A new API token; the prefix makes a leaked token easy to recognise in a scan."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a random secret, as stored in the database."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_secret(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets; False when either is missing or empty."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
