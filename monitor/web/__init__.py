"""The review web UI and JSON API (FastAPI, server-rendered Jinja2 pages, no build step).

Public API: :func:`create_web_app` builds the app from what it is given (engine,
snapshots, metrics registry, classifier, camera statuses, config);
:class:`~monitor.web.server.WebServer` serves it with uvicorn.
"""

from monitor.web.app import create_web_app
from monitor.web.server import WebServer, WebServerError

__all__ = ["WebServer", "WebServerError", "create_web_app"]
