"""Serve the web app with uvicorn in a background thread.

Responsible for binding the listening socket ourselves before uvicorn starts, so that a
port in use fails at once with a one-line error, and port 0 (pick a free one) is known
to the caller as soon as :meth:`WebServer.start` returns.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class WebServerError(Exception):
    """The server cannot listen (address in use, permission denied); one line."""


class WebServer:
    """uvicorn serving one app on host:port.

    Args:
        app: the ASGI app.
        host: listen address (IPv4 or IPv6).
        port: listen port; 0 picks a free one (see :attr:`port` after binding).
    """

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None

    def bind(self) -> int:
        """Open the listening socket.

        Returns:
            The bound port.

        Raises:
            WebServerError: the address cannot be used.
        """
        try:
            infos = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
                sock.listen(128)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise WebServerError(
                f"cannot listen on {self.host}:{self.requested_port} ({exc.strerror or exc}); "
                "pick another port (metrics.port or --port; 0 picks a free one)"
            ) from None
        sock.set_inheritable(True)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    def _make_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            # The app serves only small pages and JSON behind one reverse proxy at most.
            timeout_graceful_shutdown=5,
        )
        return uvicorn.Server(config)

    def start(self, timeout: float = 10.0) -> int:
        """Serve in a daemon thread; return once the server accepts connections.

        Returns:
            The bound port.

        Raises:
            WebServerError: the address cannot be used, or the server did not start.
        """
        port = self.port if self._socket is not None else self.bind()
        self._server = self._make_server()
        sockets = [self._socket]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": sockets},
                                        name="web-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise WebServerError(f"the web server did not start on {self.host}:{port}")
            time.sleep(0.02)
        return int(port or 0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the web server did not stop within %.0f s", timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
