"""Deliver alerts from the outbox to webhooks and MQTT brokers, with retries, in order per camera.

Responsible for the sending side of notifications (the writing side is
:func:`monitor.store.outbox.add_alerts`, inside the recording transaction):

* :class:`WebhookNotifier`: an HTTP POST of the alert's JSON with an
  ``Idempotency-Key`` header (the alert's key) and an ``X-Monitor-Signature`` header,
  ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed with the target's
  secret; :func:`verify_signature` is what a receiver runs. Any 2xx is a delivery. A
  4xx other than 408, 409, 425 and 429 is a *rejection*: the receiver understood the
  request and refused it, so the same request will not do better later.
* :class:`MqttNotifier`: a publish to ``{topic_prefix}/{site}/{camera}`` (QoS 1 by
  default), delivered when the broker acknowledges it.
* :class:`Dispatcher`: a thread that repeatedly takes the oldest pending entry of each
  (target, camera) this process is responsible for, sends it and marks it delivered,
  or schedules a retry with capped exponential backoff and jitter. The next entry of
  a camera is never sent before the previous one was delivered, so receivers see each
  camera's alerts in order. Delivery is at least once: a crash between a send and its
  mark sends that alert again, which receivers drop by its key.
* Dead letters (:func:`give_up_reason`): a failed entry goes ``dead`` instead of being
  retried when it is older than ``notify.retry.max_age`` (24 h; counted from its last
  requeue), after ``max_attempts`` tries when set, or after ``rejected_attempts`` tries
  (3) whose last was a rejection. A dead entry keeps its error, no longer holds up the
  camera's later alerts, is counted in ``monitor_outbox_dead`` (the
  MonitorNotificationsDead alert) and waits for `monitor notify retry` or `discard`.

:func:`create_notifier` is the one factory, chosen by the target's ``kind``. Metrics
for delivery are made here, against the registry passed in, with a bounded ``target``
label (the names in the config). Secrets are never logged; URLs are redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Engine

from monitor.notify_config import MqttTarget, NotifyConfig, RetryConfig, WebhookTarget
from monitor.redact import redact_text
from monitor.store.db import session_scope
from monitor.store.cluster_tables import OutboxEntry, OutboxStatus
from monitor.store.outbox import due_heads, entry_age_from, mark_dead, mark_delivered, mark_failed, status_counts

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Monitor-Signature"
KEY_HEADER = "Idempotency-Key"
SIGNATURE_TOLERANCE_S = 300
# 4xx answers that say "not now" rather than "never": timeout, conflict (the receiver is
# busy with the same key), too early, too many requests. Every other 4xx is a rejection.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class DeliveryError(Exception):
    """One delivery attempt failed; the message is one line without secrets.

    Attributes:
        rejected: the receiver answered and refused this alert (a webhook's 4xx other
            than 408, 409, 425, 429); trying again will not help.
    """

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class Notifier(Protocol):
    """Sends one alert to one target; raises :class:`DeliveryError` when it did not arrive."""

    name: str
    kind: str

    def send(self, payload: Mapping[str, Any], *, key: str, site: str, camera: str) -> None: ...

    def close(self) -> None: ...


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for a body sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: float = SIGNATURE_TOLERANCE_S
) -> bool:
    """Check a webhook's signature header, as a receiver should.

    Args:
        secret: the shared HMAC key.
        body: the request body, byte for byte.
        header: the ``X-Monitor-Signature`` value.
        now: unix seconds (default: the current time).
        tolerance: reject signatures older (or newer) than this many seconds, so a
            recorded request cannot be replayed later.

    Returns:
        True only for a well-formed, fresh signature made with ``secret``.
    """
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


class WebhookNotifier:
    """POSTs each alert as signed JSON to one URL.

    Args:
        name: the target's name in the config.
        target: its config.
        client: an ``httpx.Client`` (default: one with the target's timeout).
        clock: unix seconds for the signature's timestamp.

    Raises:
        ValueError: the secret's environment variable is not set.
    """

    kind = "webhook"

    def __init__(self, name: str, target: WebhookTarget, *, client: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        import httpx  # imported here: only processes that notify need it

        self.name = name
        self._url = target.url
        self._secret = target.secret_value()
        self._client = client or httpx.Client(timeout=target.timeout, follow_redirects=False)
        self._clock = clock
        self._errors = (httpx.HTTPError,)

    def send(self, payload: Mapping[str, Any], *, key: str, site: str, camera: str) -> None:
        body = encode_payload(payload)
        headers = {
            "Content-Type": "application/json",
            KEY_HEADER: key,
            SIGNATURE_HEADER: sign(self._secret, body, int(self._clock())),
            "User-Agent": "bear-monitor",
        }
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except self._errors as exc:
            raise DeliveryError(redact_text(f"{exc.__class__.__name__}: {exc}")) from None
        status = response.status_code
        if not 200 <= status < 300:
            rejected = 400 <= status < 500 and status not in RETRYABLE_4XX
            raise DeliveryError(f"HTTP {status} from the webhook" + (" (rejected)" if rejected else ""),
                                rejected=rejected)

    def close(self) -> None:
        self._client.close()


class MqttNotifier:
    """Publishes each alert to ``{topic_prefix}/{site}/{camera}`` and waits for the broker's ack.

    The connection is made on the first send and kept; after any failure it is torn
    down (with anything paho had queued), so a retry starts clean.

    Args:
        name: the target's name in the config.
        target: its config.
        client_id: MQTT client id when the config gives none.
    """

    kind = "mqtt"

    def __init__(self, name: str, target: MqttTarget, *, client_id: str) -> None:
        self.name = name
        self._target = target
        self._client_id = target.client_id or client_id
        self._client: Any = None
        self._connected = threading.Event()

    def topic(self, site: str, camera: str) -> str:
        return f"{self._target.topic_prefix.rstrip('/')}/{site}/{camera}"

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt

        if self._client is not None:
            if self._connected.is_set():
                return self._client
            self._reset()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id, clean_session=True)
        if self._target.username is not None:
            client.username_pw_set(self._target.username, self._target.password_value())
        self._connected.clear()

        def on_connect(_client, _userdata, _flags, reason_code, _properties) -> None:
            if not reason_code.is_failure:
                self._connected.set()

        def on_disconnect(*_args) -> None:
            self._connected.clear()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        self._client = client
        try:
            client.connect(self._target.host, self._target.port, keepalive=30)
        except (OSError, ValueError) as exc:
            self._reset()
            raise DeliveryError(f"cannot connect to MQTT broker {self._target.host}:{self._target.port}: "
                                f"{exc.__class__.__name__}: {exc}") from None
        client.loop_start()
        if not self._connected.wait(self._target.timeout):
            self._reset()
            raise DeliveryError(f"MQTT broker {self._target.host}:{self._target.port} did not accept the connection")
        return client

    def send(self, payload: Mapping[str, Any], *, key: str, site: str, camera: str) -> None:
        client = self._connect()
        try:
            info = client.publish(self.topic(site, camera), encode_payload(payload), qos=self._target.qos)
            info.wait_for_publish(self._target.timeout)
            published = info.is_published()
        except (RuntimeError, ValueError, OSError) as exc:
            self._reset()
            raise DeliveryError(f"MQTT publish failed: {exc.__class__.__name__}: {exc}") from None
        if not published:
            self._reset()
            raise DeliveryError(f"MQTT broker {self._target.host}:{self._target.port} did not acknowledge the alert")

    def _reset(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is None:
            return
        try:
            client.disconnect()
            client.loop_stop()
        except Exception:  # tearing down a broken connection may fail in many ways
            log.debug("closing the MQTT connection failed", exc_info=True)

    def close(self) -> None:
        self._reset()


def create_notifier(name: str, target: WebhookTarget | MqttTarget, *, client_id: str) -> Notifier:
    """Build the notifier for one configured target (the one factory, by ``kind``).

    Raises:
        ValueError: a secret the target needs is missing from the environment.
    """
    if isinstance(target, WebhookTarget):
        return WebhookNotifier(name, target)
    return MqttNotifier(name, target, client_id=client_id)


def targets_by_site(config: Any) -> dict[str, list[str]]:
    """site id -> names of the targets its alerts go to (``sites[].notify``)."""
    return {site.id: list(site.notify) for site in config.sites}


class NotifyMetrics:
    """Delivery metrics, against the registry passed in; ``target`` is a config name.

    The counters are this process's; the gauges are read from the shared database, so
    every worker reports the same value (aggregate them with ``max``, not ``sum``).

    Args:
        registry: where the metrics are registered.
        targets: the configured target names; their series start at zero.
    """

    def __init__(self, registry: CollectorRegistry, targets: Collection[str] = ()) -> None:
        self.delivered = Counter("monitor_notifications_delivered_total", "Alerts delivered to a target",
                                 ["target"], registry=registry)
        self.failures = Counter("monitor_notification_failures_total",
                                "Failed delivery attempts (retried unless the alert went dead)", ["target"],
                                registry=registry)
        self.dead = Counter("monitor_notifications_dead_total",
                            "Alerts this process gave up delivering to a target (dead letters)", ["target"],
                            registry=registry)
        self.pending = Gauge("monitor_outbox_pending", "Alerts waiting for delivery to a target",
                             ["target"], registry=registry)
        self.dead_waiting = Gauge("monitor_outbox_dead", "Dead alerts of a target waiting for an operator "
                                  "(`monitor notify retry` or `discard`)", ["target"], registry=registry)
        for target in targets:
            for metric in (self.delivered, self.failures, self.dead):
                metric.labels(target)


def give_up_reason(entry: OutboxEntry, error: DeliveryError, retry: RetryConfig, now: datetime) -> str | None:
    """Why a failed entry goes dead now instead of being retried; None to retry it.

    Args:
        entry: the entry as it was before this attempt (``attempts`` not yet counted).
        error: how this attempt failed.
        retry: the policy.
        now: the dispatcher's clock.
    """
    attempts = entry.attempts + 1
    if error.rejected and attempts >= retry.rejected_attempts:
        return f"rejected {attempts} time(s)"
    if retry.max_attempts is not None and attempts >= retry.max_attempts:
        return f"{attempts} failed attempts"
    age = (now - entry_age_from(entry)).total_seconds()
    if age >= retry.max_age:
        return f"undelivered for {age / 3600:.1f} h"
    return None


class Attempt(Enum):
    """What one delivery attempt came to."""

    DELIVERED = "delivered"
    RETRY = "retry"  # failed; tried again after a backoff
    DEAD = "dead"  # failed and given up on; the camera's next entry goes on


def backoff(attempts: int, retry: RetryConfig, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failure: exponential, capped, with jitter.

    The jitter (between 80% and 100% of the wait) keeps many workers that failed
    together from all retrying at the same instant.
    """
    wait = min(retry.max, retry.initial * retry.multiplier ** max(0, attempts - 1))
    return wait * (0.8 + 0.2 * rng.random())


class Dispatcher:
    """The thread that delivers outbox entries; one per `monitor run` process.

    Args:
        engine: the store's engine.
        notifiers: target name -> notifier; entries for other targets are left alone
            (another process with that target configured delivers them).
        retry: backoff settings, and when to give up on an entry (dead letters).
        cameras: returns the cameras this process delivers for (the ones it holds a
            lease on); None delivers for every camera.
        metrics: delivery metrics; optional.
        clock: wall clock (UTC), injectable.
        rng: jitter source, injectable.
    """

    def __init__(
        self,
        engine: Engine,
        notifiers: Mapping[str, Notifier],
        retry: RetryConfig,
        *,
        cameras: Callable[[], Collection[str]] | None = None,
        metrics: NotifyMetrics | None = None,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._notifiers = dict(notifiers)
        self._retry = retry
        self._cameras = cameras
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        if self._notifiers:
            self._thread.start()

    def wake(self) -> None:
        """Deliver now instead of at the next poll (called after alerts are committed)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current attempt; undelivered entries stay in the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for notifier in self._notifiers.values():
            try:
                notifier.close()
            except Exception:
                log.debug("closing notifier %s failed", notifier.name, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database outage must not end delivery for good
                log.warning("notification dispatch failed, will retry: %s", exc)
                log.debug("dispatch failure", exc_info=True)
            self._wake.wait(self._retry.poll)
            self._wake.clear()

    def run_once(self) -> int:
        """Deliver every entry that is due now, in order per camera; returns how many arrived.

        A target that fails is not tried again in the same round, so an unreachable
        receiver costs one timeout per round, not one per camera. An entry that goes
        dead lets the camera's next entry go in the same round, unless the target was
        unreachable (then the next waits for the next round, like a retry).
        """
        delivered = 0
        down: set[str] = set()
        while not self._stop.is_set():
            cameras = None if self._cameras is None else list(self._cameras())
            targets = [name for name in self._notifiers if name not in down]
            if not targets:
                break
            with session_scope(self._engine) as session:
                heads = due_heads(session=session, now=self._clock(), cameras=cameras, targets=targets)
            progress = 0
            for entry in heads:
                if self._stop.is_set() or entry.target in down:
                    continue
                attempt, reachable = self._deliver(entry)
                if attempt is Attempt.DELIVERED:
                    delivered += 1
                if attempt is not Attempt.RETRY:
                    progress += 1  # the camera's next entry is its head now
                if not reachable:
                    down.add(entry.target)
            if progress == 0:
                break
        self._export_outbox()
        return delivered

    def _deliver(self, entry: OutboxEntry) -> tuple[Attempt, bool]:
        """Send one entry and record the result; returns it and whether the target answered."""
        notifier = self._notifiers[entry.target]
        payload = entry.payload
        try:
            notifier.send(payload, key=payload["key"], site=payload["site"], camera=entry.camera_id)
        except DeliveryError as exc:
            now = self._clock()
            reason = give_up_reason(entry, exc, self._retry, now)
            if self._metrics is not None:
                self._metrics.failures.labels(entry.target).inc()
            if reason is not None:
                with session_scope(self._engine) as session:
                    mark_dead(int(entry.id), session=session, error=str(exc), now=now)
                if self._metrics is not None:
                    self._metrics.dead.labels(entry.target).inc()
                log.error("alert %s to %s is dead (%s): %s; the camera's later alerts go on; "
                          "`monitor notify retry --target %s` requeues it",
                          payload["key"], entry.target, reason, exc, entry.target)
                return Attempt.DEAD, exc.rejected
            wait = backoff(entry.attempts + 1, self._retry, self._rng)
            log.warning("alert %s to %s failed (attempt %d, next in %.1fs): %s",
                        payload["key"], entry.target, entry.attempts + 1, wait, exc)
            with session_scope(self._engine) as session:
                mark_failed(int(entry.id), session=session, error=str(exc), retry_at=now + timedelta(seconds=wait))
            return Attempt.RETRY, False
        with session_scope(self._engine) as session:
            mark_delivered(int(entry.id), session=session, now=self._clock())
        if self._metrics is not None:
            self._metrics.delivered.labels(entry.target).inc()
        log.debug("alert %s delivered to %s", payload["key"], entry.target)
        return Attempt.DELIVERED, True

    def _export_outbox(self) -> None:
        if self._metrics is None:
            return
        with session_scope(self._engine) as session:
            counts = status_counts(session=session)
        for name in self._notifiers:
            self._metrics.pending.labels(name).set(counts.get((name, OutboxStatus.PENDING.value), 0))
            self._metrics.dead_waiting.labels(name).set(counts.get((name, OutboxStatus.DEAD.value), 0))


def build_dispatcher(
    engine: Engine,
    config: NotifyConfig,
    *,
    registry: CollectorRegistry | None,
    client_id: str | None = None,
    cameras: Callable[[], Collection[str]] | None = None,
) -> Dispatcher:
    """A dispatcher for every target in the config.

    Raises:
        ValueError: a target's secret is missing from the environment.
    """
    client_id = client_id or f"bear-monitor-{socket.gethostname()}"
    notifiers = {name: create_notifier(name, target, client_id=f"{client_id}-{name}")
                 for name, target in config.targets.items()}
    metrics = NotifyMetrics(registry, notifiers) if registry is not None and notifiers else None
    return Dispatcher(engine, notifiers, config.retry, cameras=cameras, metrics=metrics)
