"""Dead letters: an alert a target will not take goes dead, stops holding up its camera, shows in
metrics and `monitor notify`, and arrives after a requeue, in order, with its original key.

Real webhook receivers over real HTTP, the real recorder and dispatcher, both backends;
time comes from a fake clock so "a day later" takes no time.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlmodel import Session, select

from alert_receivers import WebhookReceiver
from scaleout_helpers import CAMERAS, T0
from monitor.notify import DeliveryError, Dispatcher, NotifyMetrics, WebhookNotifier, give_up_reason
from monitor.notify_config import RetryConfig, WebhookTarget
from monitor.store import session_scope
from monitor.store.cluster_tables import Alert, OutboxEntry
from monitor.store.outbox import mark_dead, requeue_dead
from monitor.store.recording import Recorder

SECRET = "whsec-dead-letters-4b1d"


def webhook(url: str, timeout: float = 2.0) -> WebhookNotifier:
    return WebhookNotifier("ops", WebhookTarget(kind="webhook", url=url, secret=SECRET, timeout=timeout))


def entries(engine) -> list[OutboxEntry]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxEntry).order_by(OutboxEntry.id)).all())


def alert_keys(engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(Alert.key).order_by(Alert.id)).all())


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"target": "ops"})


@pytest.fixture
def recorder(engine, snapshots, clock) -> Recorder:
    return Recorder(engine, snapshots, targets_by_site={"north": ["ops"]}, worker="w1", clock=clock)


def test_a_rejected_alert_goes_dead_and_the_cameras_next_alerts_go_on(
    engine, recorder, make_routed, free_port, clock
):
    receiver = WebhookReceiver(free_port(), SECRET).start()
    registry = CollectorRegistry()
    dispatcher = Dispatcher(engine, {"ops": webhook(receiver.url)}, RetryConfig(rejected_attempts=2),
                            metrics=NotifyMetrics(registry, ["ops"]), clock=clock, rng=random.Random(1))
    try:
        recorder([make_routed("gate", T0 + timedelta(seconds=i), seed=i) for i in range(3)])
        first, second, third = alert_keys(engine)
        receiver.refuse[first] = 400  # e.g. a payload the receiver's schema does not accept

        # Rejected once: retried later, and the camera's later alerts wait (order per camera).
        assert dispatcher.run_once() == 0
        assert receiver.payloads() == [] and [e.status for e in entries(engine)] == ["pending"] * 3

        # Rejected again (rejected_attempts 2): dead at once, not after a day; the rest go on.
        clock.advance(2)
        assert dispatcher.run_once() == 2
        assert [p["key"] for p in receiver.payloads()] == [second, third]
        dead, *delivered = entries(engine)
        assert (dead.status, dead.attempts, dead.dead_at) == ("dead", 2, clock.now)
        assert "HTTP 400" in dead.last_error and "rejected" in dead.last_error
        assert [e.status for e in delivered] == ["delivered", "delivered"]
        assert sample(registry, "monitor_notifications_dead_total") == 1
        assert sample(registry, "monitor_outbox_dead") == 1 and sample(registry, "monitor_outbox_pending") == 0
        assert sample(registry, "monitor_notification_failures_total") == 2
        assert sample(registry, "monitor_notifications_delivered_total") == 2

        # Nothing retries a dead entry by itself.
        clock.advance(3600)
        assert dispatcher.run_once() == 0 and receiver.attempts[first] == 2

        # The receiver is fixed; an operator requeues: it arrives with its original key.
        del receiver.refuse[first]
        with session_scope(engine) as session:
            assert requeue_dead(session=session, target="ops", now=clock.now) == 1
        assert dispatcher.run_once() == 1
        assert [p["key"] for p in receiver.payloads()] == [second, third, first]
        requeued = entries(engine)[0]
        assert (requeued.status, requeued.last_error, requeued.requeued_at) == ("delivered", None, clock.now)
        assert sample(registry, "monitor_outbox_dead") == 0
    finally:
        dispatcher.stop()
        receiver.stop()


def test_an_unreachable_target_sends_alerts_dead_after_max_age_and_requeued_ones_arrive_in_order(
    engine, recorder, make_routed, free_port, clock
):
    port = free_port()  # nothing listens here until the receiver starts below
    retry = RetryConfig(initial=1, max=10, max_age=60)
    dispatcher = Dispatcher(engine, {"ops": webhook(f"http://127.0.0.1:{port}/alerts", timeout=1)}, retry,
                            clock=clock, rng=random.Random(2))
    receiver = WebhookReceiver(port, SECRET)
    try:
        recorder([make_routed("gate", T0, seed=0), make_routed("trail", T0, seed=1)])
        recorder([make_routed("gate", T0 + timedelta(seconds=1), seed=2)])
        gate_1, trail_1, gate_2 = alert_keys(engine)

        assert dispatcher.run_once() == 0
        clock.advance(30)
        assert dispatcher.run_once() == 0
        assert [e.status for e in entries(engine)] == ["pending"] * 3  # 30 s old: still retried

        # Past max_age, each entry goes dead at its next failed try; one try per round
        # while the target is unreachable; none waits forever behind another.
        clock.advance(31)
        for _ in range(3):
            assert dispatcher.run_once() == 0
        assert [(e.status, e.attempts) for e in entries(engine)] == [("dead", 3), ("dead", 1), ("dead", 1)]
        assert all("ConnectError" in e.last_error for e in entries(engine))

        # The target is back: a new alert is delivered at once, the dead ones are not.
        receiver.start()
        recorder([make_routed("gate", T0 + timedelta(seconds=100), seed=3)])
        new = alert_keys(engine)[-1]
        assert dispatcher.run_once() == 1
        assert [p["key"] for p in receiver.payloads()] == [new]

        # Requeued, one camera and then the rest: in their original order per camera.
        with session_scope(engine) as session:
            assert requeue_dead(session=session, target="ops", camera="gate", now=clock.now) == 2
        assert dispatcher.run_once() == 2
        with session_scope(engine) as session:
            assert requeue_dead(session=session, target="ops", now=clock.now) == 1
        assert dispatcher.run_once() == 1
        assert [p["key"] for p in receiver.payloads()] == [new, gate_1, gate_2, trail_1]
        assert {e.status for e in entries(engine)} == {"delivered"}
    finally:
        dispatcher.stop()
        receiver.stop()


@pytest.mark.parametrize(("status", "rejected"), [
    (400, True), (401, True), (403, True), (404, True), (410, True), (422, True),
    (408, False), (409, False), (425, False), (429, False), (500, False), (503, False),
])
def test_which_webhook_answers_are_rejections(status, rejected, free_port):
    receiver = WebhookReceiver(free_port(), SECRET).start()
    receiver.answer = status
    notifier = webhook(receiver.url)
    try:
        with pytest.raises(DeliveryError) as failed:
            notifier.send({"key": "k-1", "site": "north"}, key="k-1", site="north", camera="gate")
    finally:
        notifier.close()
        receiver.stop()
    assert failed.value.rejected is rejected
    assert f"HTTP {status}" in str(failed.value) and "\n" not in str(failed.value)


def _entry(*, attempts: int = 0, age_h: float = 0.0, requeued_h: float | None = None) -> OutboxEntry:
    return OutboxEntry(alert_id=1, target="ops", camera_id="gate", attempts=attempts,
                       created_at=T0 - timedelta(hours=age_h),
                       requeued_at=None if requeued_h is None else T0 - timedelta(hours=requeued_h))


@pytest.mark.parametrize(("entry", "rejected", "retry", "reason"), [
    (_entry(attempts=0), True, RetryConfig(), None),
    (_entry(attempts=2), True, RetryConfig(), "rejected 3 time(s)"),
    (_entry(attempts=2), False, RetryConfig(), None),  # a 503 is never a rejection
    (_entry(attempts=0), True, RetryConfig(rejected_attempts=1), "rejected 1 time(s)"),
    (_entry(attempts=4), False, RetryConfig(max_attempts=5), "5 failed attempts"),
    (_entry(attempts=400, age_h=23.9), False, RetryConfig(), None),  # no attempt limit by default
    (_entry(attempts=1, age_h=24.5), False, RetryConfig(), "undelivered for 24.5 h"),
    (_entry(attempts=1, age_h=2), False, RetryConfig(max_age="1h"), "undelivered for 2.0 h"),
    (_entry(attempts=0, age_h=72, requeued_h=1), False, RetryConfig(), None),  # age counts from the requeue
])
def test_when_a_failed_entry_goes_dead(entry, rejected, retry, reason):
    assert give_up_reason(entry, DeliveryError("x", rejected=rejected), retry, T0) == reason


# ---------------------------------------------------------------- the operator's commands


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_monitor_notify_lists_requeues_and_discards_dead_alerts(
    engine, recorder, make_routed, backend_url, clock, tmp_path
):
    recorder([make_routed("gate", T0, seed=0), make_routed("trail", T0, seed=1), make_routed("creek", T0, seed=2)])
    keys = alert_keys(engine)
    with session_scope(engine) as session:
        for entry in entries(engine)[:2]:
            mark_dead(int(entry.id), session=session, error="HTTP 410 from the webhook (rejected)", now=clock.now)
    config = {
        "database": backend_url, "snapshots": str(tmp_path / "snapshots"),
        "notify": {"targets": {"ops": {"kind": "webhook", "url": "http://127.0.0.1:9/x", "secret": SECRET}}},
        "sites": [{"id": site, "notify": ["ops"],
                   "cameras": [{"id": camera, "url": f"rtsp://10.0.0.1/{camera}"} for camera in cameras]}
                  for site, cameras in CAMERAS.items()],
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))

    listed = run_cli("notify", "dead", "-c", "monitor.yaml", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "HTTP 410" in listed.stdout and "gate" in listed.stdout and "trail" in listed.stdout
    assert "creek" not in listed.stdout  # still pending: not dead
    assert "ops: 2 dead; `monitor notify retry --target ops`" in listed.stdout
    as_json = [json.loads(line) for line in
               run_cli("notify", "dead", "-c", "monitor.yaml", "--json", cwd=tmp_path).stdout.splitlines()]
    assert [(row["camera"], row["key"]) for row in as_json] == [("gate", keys[0]), ("trail", keys[1])]

    unknown = run_cli("notify", "retry", "-c", "monitor.yaml", "--target", "pager", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: target 'pager' is not under notify.targets")
    assert len(unknown.stderr.strip().splitlines()) == 1

    requeued = run_cli("notify", "retry", "-c", "monitor.yaml", "--target", "ops", "--camera", "gate", cwd=tmp_path)
    assert requeued.returncode == 0 and "requeued 1 dead alert(s) to ops" in requeued.stdout, requeued.stderr
    discarded = run_cli("notify", "discard", "-c", "monitor.yaml", "--target", "ops", cwd=tmp_path)
    assert discarded.returncode == 0 and "discarded 1 dead alert(s) to ops" in discarded.stdout, discarded.stderr
    after = run_cli("notify", "dead", "-c", "monitor.yaml", cwd=tmp_path)
    assert after.returncode == 0 and "no dead alerts" in after.stdout

    gate, trail, creek = entries(engine)
    assert (gate.status, gate.attempts, gate.dead_at) == ("pending", 0, None) and gate.requeued_at is not None
    assert gate.payload["key"] == keys[0]  # the same idempotency key
    assert trail.status == "discarded" and trail.last_error.startswith("HTTP 410")
    assert creek.status == "pending" and creek.requeued_at is None
