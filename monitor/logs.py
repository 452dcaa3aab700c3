"""Logging set-up: one readable line per event on stderr, credentials always scrubbed.

Tracebacks belong in the debug log (``-v``); a user sees what happened and what to do.
"""

from __future__ import annotations

import logging
import sys

from monitor.redact import RedactingFilter


def setup_logging(verbose: bool = False) -> None:
    """Send log records to stderr, redacted; DEBUG with tracebacks when ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # libraries are chatty at INFO; their news is debug detail for us
        for name in ("apscheduler", "libav", "urllib3", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)
