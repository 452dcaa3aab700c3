"""Alerts reach a real webhook receiver that was down: each exactly once after dedup, in order per camera.

The issue asks for a 60 s outage; the suite uses ``$MONITOR_TEST_OUTAGE_S`` seconds
(default 8, to keep CI short; ``MONITOR_TEST_OUTAGE_S=60`` runs the full one). Alerts are
raised all through the outage by the real recorder (review rows, alert and outbox entry
in one transaction) and delivered by the real dispatcher over real HTTP with HMAC
signatures; the receiver also fails some requests with 503 after it returns.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import Session, func, select

from alert_receivers import WebhookReceiver, assert_each_once_in_order
from scaleout_helpers import T0
from monitor.notify import Dispatcher, WebhookNotifier, encode_payload, sign, verify_signature
from monitor.notify_config import RetryConfig, WebhookTarget
from monitor.store import SnapshotStore, StoreError
from monitor.store.cluster_tables import Alert, OutboxEntry
from monitor.store.recording import Recorder

OUTAGE_S = float(os.environ.get("MONITOR_TEST_OUTAGE_S", "8"))
SECRET = "whsec-test-9c1e"
CAMERAS = ["gate", "trail", "creek"]
FAST_RETRY = RetryConfig(initial=0.2, max=1.0, multiplier=2.0, poll=0.2)


def alerts_in(engine) -> list[tuple[int, str, str]]:
    with Session(engine) as session:
        return [tuple(row) for row in session.exec(select(Alert.id, Alert.key, Alert.camera_id)).all()]


def pending(engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(OutboxEntry).where(OutboxEntry.status == "pending")).one()


def test_signatures_verify_only_with_the_key_the_body_and_a_fresh_time():
    body = encode_payload({"key": "k", "camera": "gate"})
    header = sign(SECRET, body, 1_000_000)
    assert verify_signature(SECRET, body, header, now=1_000_010)
    assert not verify_signature("other-key", body, header, now=1_000_010)
    assert not verify_signature(SECRET, body + b" ", header, now=1_000_010)
    assert not verify_signature(SECRET, body, header, now=1_000_000 + 3600)  # a replay, an hour later
    assert not verify_signature(SECRET, body, "garbage", now=1_000_010)


def test_every_alert_raised_during_an_outage_arrives_once_in_order(engine, snapshots, make_routed, free_port):
    receiver = WebhookReceiver(free_port(), SECRET).start()
    notifier = WebhookNotifier("ops", WebhookTarget(kind="webhook", url=receiver.url, secret=SECRET, timeout=2))
    dispatcher = Dispatcher(engine, {"ops": notifier}, FAST_RETRY)
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["ops"]}, worker="w1",
                        on_alerts=dispatcher.wake)
    dispatcher.start()
    raised = 0
    stop_raising = threading.Event()

    def raise_alerts() -> None:
        nonlocal raised
        step = 0
        while not stop_raising.is_set():
            moment = T0 + timedelta(seconds=step)
            # Two cameras alert, one only every other time; a non-alerting still is mixed in.
            batch = [make_routed(camera, moment, seed=step) for camera in CAMERAS[: 2 + step % 2]]
            batch.append(make_routed("lake", moment, alert=False, label="none", queued=False))
            recorder(batch)
            raised += len(batch) - 1
            step += 1
            time.sleep(0.1)

    producer = threading.Thread(target=raise_alerts)
    try:
        producer.start()
        time.sleep(1.0)
        receiver.stop()  # the receiver goes away while alerts keep coming
        stopped_with = len(receiver.payloads())
        time.sleep(OUTAGE_S)
        assert len(receiver.payloads()) == stopped_with
        assert pending(engine) > 0
        receiver.fail_next = 3  # ... and has trouble for a moment when it returns
        receiver.start()
        time.sleep(1.0)
        stop_raising.set()
        producer.join(30)
        deadline = time.monotonic() + 30
        while pending(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pending(engine) == 0
    finally:
        stop_raising.set()
        dispatcher.stop()
        receiver.stop()
    alerts = alerts_in(engine)
    assert len(alerts) == raised and raised > OUTAGE_S * 10  # alerts really were raised during the outage
    assert receiver.rejected == 0
    assert_each_once_in_order(receiver.payloads(), alerts)
    first = receiver.payloads()[0]
    assert set(first) == {"key", "alert_id", "site", "camera", "captured_at", "label", "confidence", "model"}
    assert first["site"] == "north" and first["label"] == "grizzly"


def test_an_alert_exists_only_with_its_stored_still(engine, tmp_path, make_routed):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the snapshot folder should be: every snapshot write fails")
    recorder = Recorder(engine, SnapshotStore(blocked), targets_by_site={"north": ["ops"]})
    with pytest.raises(StoreError):
        recorder([make_routed("gate", T0)])
    assert alerts_in(engine) == [] and pending(engine) == 0


def test_a_receiver_that_never_answers_delays_only_its_own_target(engine, snapshots, make_routed, free_port):
    receiver = WebhookReceiver(free_port(), SECRET).start()
    good = WebhookNotifier("good", WebhookTarget(kind="webhook", url=receiver.url, secret=SECRET))
    dead = WebhookNotifier("dead", WebhookTarget(kind="webhook", url=f"http://127.0.0.1:{free_port()}/x",
                                                 secret=SECRET, timeout=1))
    dispatcher = Dispatcher(engine, {"good": good, "dead": dead}, FAST_RETRY)
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["good", "dead"]})
    recorder([make_routed(camera, T0 + timedelta(seconds=i), seed=i) for i, camera in enumerate(CAMERAS)])
    try:
        assert dispatcher.run_once() == 3
    finally:
        dispatcher.stop()
        receiver.stop()
    assert len(receiver.payloads()) == 3
    with Session(engine) as session:
        dead_entries = session.exec(select(OutboxEntry).where(OutboxEntry.target == "dead")).all()
    # One attempt per round for the target that is down, not one per camera.
    assert sorted(entry.attempts for entry in dead_entries) == [0, 0, 1]
    assert all(entry.status == "pending" for entry in dead_entries)


@pytest.mark.slow
def test_monitor_run_notifies_a_webhook_of_bears_on_a_camera_trap_card(
    tmp_path, data_dir, model_cache, database_url, free_port
):
    """End to end: `monitor run`, the real model on real bear photos, a site at stage full."""
    import shutil
    import signal
    import subprocess
    import sys

    import yaml

    from monitor.config import load_config
    from monitor.store import create_engine_for, init_schema, session_scope, sync_sites_and_cameras
    from rollout.promote import RolloutContext, promote

    card = tmp_path / "card"
    card.mkdir()
    for photo in sorted((data_dir / "bears" / "grizzly").glob("*.jpg"))[:6]:
        shutil.copy(photo, card / photo.name)
    receiver = WebhookReceiver(free_port(), SECRET).start()
    config = {
        "database": database_url, "snapshots": str(tmp_path / "snapshots"), "model_cache": str(model_cache),
        "metrics": {"port": 0},
        "notify": {"targets": {"ops": {"kind": "webhook", "url": receiver.url, "secret_env": "TEST_HOOK_SECRET"}},
                   "retry": {"initial": "200ms", "max": "1s", "poll": "200ms"}},
        "sites": [{"id": "north", "notify": ["ops"], "cameras": [{"id": "trail", "path": str(card), "every": "1s"}]}],
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(tmp_path / "monitor.yaml")
    engine = create_engine_for(database_url)
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(loaded, session=session)
    ctx = RolloutContext.from_config(loaded)
    for _ in range(3):  # manual -> limited -> expansion -> full
        with session_scope(engine) as session:
            promote("north", session=session, ctx=ctx, actor="test", force=True, reason="end-to-end test")

    missing = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "-c", "monitor.yaml"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "TEST_HOOK_SECRET": ""})
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: notify.targets")

    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "-c", "monitor.yaml"], cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TEST_HOOK_SECRET": SECRET})
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                done = alerts_in(engine)
                if len(done) >= 3 and pending(engine) == 0 and len(receiver.payloads()) >= len(done):
                    break
                time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
            receiver.stop()
    alerts = alerts_in(engine)
    engine.dispose()
    assert len(alerts) >= 3, log.read_text()  # most of six grizzly photos are positives
    assert receiver.rejected == 0
    assert_each_once_in_order(receiver.payloads(), alerts)
    assert {p["camera"] for p in receiver.payloads()} == {"trail"}
    assert SECRET not in log.read_text()
