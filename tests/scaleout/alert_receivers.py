"""Real alert receivers for the outbox tests: a local HTTP server and an MQTT subscriber.

Both record every delivery as it arrives (duplicates included), so a test can check
"each alert exactly once after deduplication by key, in order per camera".
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.notify import KEY_HEADER, SIGNATURE_HEADER, verify_signature


class WebhookReceiver:
    """A real HTTP server on a fixed port that can be stopped and started again.

    Every POST with a valid signature whose Idempotency-Key matches the body's key is
    recorded and answered 204; anything else is recorded as rejected and answered 401.
    ``fail_next`` answers that many valid requests with 503 (a receiver having trouble).
    ``answer`` (a status) answers every valid request with it instead, and ``refuse``
    (key -> status) answers the alerts with those keys with theirs; neither is recorded
    as received. ``attempts`` counts every valid request per key.
    """

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self.fail_next = 0
        self.answer: int | None = None
        self.refuse: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                valid = verify_signature(receiver.secret, body, self.headers.get(SIGNATURE_HEADER, ""))
                payload = json.loads(body) if valid else {}
                with receiver._lock:
                    key = payload.get("key")
                    if valid:
                        receiver.attempts[key] = receiver.attempts.get(key, 0) + 1
                    if not valid or self.headers.get(KEY_HEADER) != key:
                        receiver.rejected += 1
                        status = 401
                    elif receiver.answer is not None:
                        status = receiver.answer
                    elif key in receiver.refuse:
                        status = receiver.refuse[key]
                    elif receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        status = 503
                    else:
                        receiver.received.append(payload)
                        status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:  # the old socket may linger a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)


def first_arrivals(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deliveries deduplicated by key, keeping each key's first arrival, in arrival order."""
    seen: set[str] = set()
    unique = []
    for payload in payloads:
        if payload["key"] not in seen:
            seen.add(payload["key"])
            unique.append(payload)
    return unique


def assert_each_once_in_order(arrived: list[dict[str, Any]], alerts: list[tuple[int, str, str]]) -> None:
    """Every alert (id, key, camera) arrived, once after dedup, each camera's in id order."""
    unique = first_arrivals(arrived)
    assert sorted(p["key"] for p in unique) == sorted(key for _, key, _ in alerts)
    assert len(unique) == len(alerts)
    by_camera: dict[str, list[int]] = {}
    for payload in unique:
        by_camera.setdefault(payload["camera"], []).append(payload["alert_id"])
    expected: dict[str, list[int]] = {}
    for alert_id, _key, camera in sorted(alerts):
        expected.setdefault(camera, []).append(alert_id)
    assert by_camera == expected


class MqttSubscriber:
    """A paho subscriber with a persistent session (QoS 1), as a real consumer of alerts should
    have: messages published while it is disconnected wait for it at the broker."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber") -> None:
        import paho.mqtt.client as mqtt

        self.received: list[dict[str, Any]] = []
        self.topics: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=1)

        def on_connect(client, _userdata, _flags, reason_code, _properties) -> None:
            if not reason_code.is_failure:
                client.subscribe(topic, qos=1)

        def on_subscribe(*_args) -> None:
            self._subscribed.set()

        def on_message(_client, _userdata, message) -> None:
            with self._lock:
                self.received.append(json.loads(message.payload))
                self.topics.append(message.topic)

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message
        self._port = port

    def start(self, timeout: float = 10) -> "MqttSubscriber":
        self._client.connect("127.0.0.1", self._port, keepalive=5)
        self._client.loop_start()
        assert self._subscribed.wait(timeout), "subscriber did not subscribe"
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)
