"""One-line errors and exit codes shared by every command (`monitor`, `rollout`).

A user sees what happened and what to do on one line of stderr, credentials masked;
tracebacks go to the debug log (`-v`). Exit codes: 0 ok, 1 runtime failure, 2 bad usage
or config.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

import click

from monitor.redact import redact_text

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("monitor")

ErrorTypes = Callable[[], tuple[type[BaseException], ...]]


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on one line of stderr, credentials masked, and exit."""
    click.echo(f"error: {redact_text(' '.join(str(message).split()))}", err=True)
    sys.exit(code)


def one_line_errors(*, usage: ErrorTypes, failure: ErrorTypes) -> Callable:
    """Decorate a command so the errors a user can cause become one line and an exit code.

    Args:
        usage: returns the exception types that mean bad usage or config (exit 2). A
            callable, so commands import heavy modules only when they run.
        failure: returns the exception types that mean a runtime failure (exit 1).
            File-system errors (OSError) are always runtime failures.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except usage() as exc:
                log.debug("usage error", exc_info=True)
                fail(str(exc), EXIT_USAGE)
            except failure() as exc:
                log.debug("failure", exc_info=True)
                fail(str(exc), EXIT_FAILURE)
            except OSError as exc:
                log.debug("failure", exc_info=True)
                fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_FAILURE)

        return wrapper

    return decorate
