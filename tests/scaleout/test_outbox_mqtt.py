"""Alerts reach MQTT subscribers through a broker that was down: each once after dedup, in order per camera.

The system Mosquitto on 127.0.0.1:1883 cannot be stopped by a test, so this one runs
its own ``mosquitto`` on a free port (with persistence, so a subscriber's session and
its queued QoS 1 messages survive the restart), and skips when Mosquitto is not
installed. Outage length: ``$MONITOR_TEST_OUTAGE_S`` seconds (default 8; the issue's 60
with ``MONITOR_TEST_OUTAGE_S=60``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from alert_receivers import MqttSubscriber, assert_each_once_in_order
from scaleout_helpers import T0
from monitor.notify import Dispatcher, MqttNotifier
from monitor.notify_config import MqttTarget, RetryConfig
from monitor.store.cluster_tables import Alert, OutboxEntry
from monitor.store.recording import Recorder

OUTAGE_S = float(os.environ.get("MONITOR_TEST_OUTAGE_S", "8"))
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
CAMERAS = ["gate", "trail", "lake"]
FAST_RETRY = RetryConfig(initial=0.2, max=1.0, multiplier=2.0, poll=0.2)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (Debian package mosquitto)")


class Broker:
    """A mosquitto subprocess on a fixed port, with persistence, that can be stopped and restarted."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nlog_dest stderr\n"
            # Run as root, mosquitto would switch to its own user and could not save here.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        )
        self.log = (folder / "mosquitto.log").open("ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean stop saves the persistent sessions
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path, free_port):
    broker = Broker(free_port(), tmp_path / "mosquitto").start()
    yield broker
    broker.stop()
    broker.log.close()


def counts(engine) -> tuple[list[tuple[int, str, str]], int]:
    with Session(engine) as session:
        alerts = [tuple(row) for row in session.exec(select(Alert.id, Alert.key, Alert.camera_id)).all()]
        waiting = session.exec(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.status == "pending")).one()
    return alerts, waiting


def test_every_alert_raised_while_the_broker_is_down_arrives_once_in_order(engine, snapshots, make_routed, broker):
    target = MqttTarget(kind="mqtt", port=broker.port, topic_prefix="parks/alerts", timeout=2)
    subscriber = MqttSubscriber(broker.port, "parks/alerts/#").start()
    notifier = MqttNotifier("park-mqtt", target, client_id="monitor-test")
    dispatcher = Dispatcher(engine, {"park-mqtt": notifier}, FAST_RETRY)
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["park-mqtt"], "south": ["park-mqtt"]},
                        on_alerts=dispatcher.wake)
    dispatcher.start()
    stop_raising = threading.Event()
    raised = 0

    def raise_alerts() -> None:
        nonlocal raised
        step = 0
        while not stop_raising.is_set():
            batch = [make_routed(camera, T0 + timedelta(seconds=step), seed=step) for camera in CAMERAS]
            recorder(batch)
            raised += len(batch)
            step += 1
            time.sleep(0.1)

    producer = threading.Thread(target=raise_alerts)
    try:
        producer.start()
        time.sleep(1.0)
        broker.stop()
        time.sleep(OUTAGE_S)
        assert counts(engine)[1] > 0  # undelivered alerts wait in the outbox
        broker.start()
        time.sleep(1.0)
        stop_raising.set()
        producer.join(30)
        deadline = time.monotonic() + 30
        while counts(engine)[1] and time.monotonic() < deadline:
            time.sleep(0.2)
        alerts, waiting = counts(engine)
        assert waiting == 0
        deadline = time.monotonic() + 15  # the subscriber reconnects and gets what the broker kept for it
        while len({p["key"] for p in subscriber.payloads()}) < len(alerts) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_raising.set()
        dispatcher.stop()
        subscriber.stop()
    assert len(alerts) == raised and raised > OUTAGE_S * 10
    assert_each_once_in_order(subscriber.payloads(), alerts)
    assert {topic.rsplit("/", 2)[-2] for topic in subscriber.topics} == {"north", "south"}
    assert all(topic == f"parks/alerts/{p['site']}/{p['camera']}"
               for topic, p in zip(subscriber.topics, subscriber.payloads()))
