"""Keep camera credentials out of everything a person or a scraper can read.

Camera URLs often carry a user and password (rtsp://admin:secret@10.0.0.5/stream) or
a token in the query string. Every place that prints, logs, stores for display or serves
a URL goes through :func:`redact_url`; :class:`RedactingFilter` is a second line of
defence that scrubs any URL with credentials from log records (FFmpeg error messages
quote the URL they failed to open).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pass", "pwd", "token", "access_token", "auth", "key", "apikey",
     "api_key", "secret", "signature", "sig", "user", "username", "login"}
)
# scheme://userinfo@ anywhere in free text (error messages, log lines)
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")
_SECRET_PARAM_IN_TEXT = re.compile(
    r"(?P<key>[?&](?:" + "|".join(sorted(SECRET_QUERY_KEYS)) + r"))=(?P<value>[^&\s'\":;,)]+)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """Return ``url`` with its user, password and secret query parameters masked.

    Args:
        url: a camera URL or a file path (paths are returned unchanged).

    Returns:
        The URL safe to display, e.g. ``rtsp://***@cam.local:554/live?token=***``.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask credentials of any URL that appears inside free text."""
    text = _USERINFO_IN_TEXT.sub(lambda m: m.group("scheme") + MASK + "@", text)
    return _SECRET_PARAM_IN_TEXT.sub(lambda m: m.group("key") + "=" + MASK, text)


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs credentials from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
