"""A real Prometheus scraping a real `monitor run`, evaluating our rules; every dashboard
panel query and every rule expression must return data.

The run watches a clip made (in a temporary folder) from the real photos: grizzly
photos between infrared night stills, so it has positives, alerts (the site is at the
full stage) and out-of-domain stills, plus a camera that is down. Before the run, the
site's database is given a history, as weeks of operation would have left it: a
manual-stage baseline, a last day with the clip camera's alert rate six times higher
and the dead camera's at zero, and a review queue with an old pending item and a poor
reviewed precision. The site's alerts go to a webhook nobody answers, so they become
dead letters. So every alert has something to fire on, and each is checked to.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import update

from monitor.config import load_config
from monitor.model import load_model
from monitor.model.tiling import TiledClassifier
from monitor.ood import measure
from monitor.store import SnapshotStore, create_engine_for, init_schema, record_predictions, session_scope
from monitor.store import sync_sites_and_cameras, upsert_increments
from monitor.store.reviews import decide
from monitor.store.tables import CameraHour, ConfidenceHour, LabelHour, ReviewItem
from monitor.store.users import create_user
from monitor.types import DEFAULT_ALERT_LABELS, Frame, Outcome, Prediction, QueueReason, Route
from observability_helpers import (
    ALERTS,
    GRAFANA,
    RULES,
    Prometheus,
    cover,
    have_prometheus,
    hours_back,
    make_slideshow,
)
from rollout.promote import RolloutContext, promote
from rollout.store import init_rollout_schema
from running_monitor import RunningMonitor, http_get

pytestmark = pytest.mark.skipif(bool(have_prometheus()), reason=have_prometheus() or "")

WIDTH, HEIGHT = 640, 360
# Alerts the scenario provokes; the rule file must hold exactly these.
EXPECTED_ALERTS = {
    "MonitorAlertRateDoubled": {"camera": "slides"},
    "MonitorAlertRateHalved": {"camera": "dead"},
    "MonitorModelDrift": {"camera": "slides"},
    "MonitorCameraDown": {"camera": "dead"},
    "MonitorNoFrames": {"camera": "dead"},
    "MonitorOutOfDomainSurge": {"camera": "slides"},
    "MonitorReviewBacklog": {"site": "park"},
    "MonitorReviewedPrecisionDrop": {"site": "park"},
    "MonitorNotificationsDead": {"target": "pager"},
}


def _slides(data_dir: Path, model_cache: Path) -> list[np.ndarray]:
    """A grizzly photo the model finds at full-frame size, then three grey night stills (75% out of domain)."""
    classifier = TiledClassifier(
        load_model("builtin:imagenet-bears", cache_dir=model_cache, alert_labels=list(DEFAULT_ALERT_LABELS)),
        list(DEFAULT_ALERT_LABELS), scale=1,
    )
    grizzlies = [cover(np.asarray(Image.open(p).convert("RGB")), WIDTH, HEIGHT)
                 for p in sorted((data_dir / "bears" / "grizzly").glob("*.jpg"))[:12]]
    found = [image for image, p in zip(grizzlies, classifier.predict_batch(grizzlies))
             if p.label == "grizzly" and p.confidence >= 0.7][:1]
    night = [cover(np.asarray(Image.open(p).convert("RGB")), WIDTH, HEIGHT)
             for p in sorted((data_dir / "ood").glob("*.jpg"))]
    grey = [image for image in night if measure(image).colourfulness < 1.0][:3]
    if not found or len(grey) < 3:
        pytest.skip(f"the real photos under {data_dir} lack a clear grizzly or three infrared stills")
    return [found[0], *grey]


def _seed_history(config, now: datetime, snapshots: SnapshotStore) -> None:
    """What weeks of operation would have left in the database (see the module docstring)."""
    engine = create_engine_for(config.database)
    try:
        init_schema(engine)
        init_rollout_schema(engine)
        with session_scope(engine) as session:
            sync_sites_and_cameras(config, session=session)
        rows: dict[type, list[dict]] = {CameraHour: [], LabelHour: [], ConfidenceHour: []}
        # (camera, episodes per hour) in the baseline (10 to 3 days ago) and in the last day
        # (2 to 12 hours ago, so the 1h window holds only what the run itself records)
        for camera, baseline, recent in (("slides", 1, 6), ("dead", 6, 0)):
            for hours, per_hour in ((hours_back(now, 240, 72), baseline), (hours_back(now, 12, 2), recent)):
                for hour in hours:
                    rows[CameraHour].append({"camera_id": camera, "hour": hour, "frames": 720,
                                             "alert_episodes": per_hour, "out_of_domain": 0})
                    rows[LabelHour].append({"camera_id": camera, "hour": hour, "label": "none",
                                            "predictions": 720, "positives": 0})
                    rows[ConfidenceHour].append({"camera_id": camera, "hour": hour, "bucket": 9,
                                                 "predictions": 720})
        keys = {CameraHour: ("camera_id", "hour"), LabelHour: ("camera_id", "hour", "label"),
                ConfidenceHour: ("camera_id", "hour", "bucket")}
        with session_scope(engine) as session:
            for table, table_rows in rows.items():
                upsert_increments(table, table_rows, keys=keys[table], session=session)
            session.commit()

        # The site left manual now: its manual period (the drift baseline) ends here.
        ctx = RolloutContext.from_config(config, clock=lambda: now)
        with session_scope(engine) as session:
            for _ in range(3):
                promote("park", session=session, ctx=ctx, actor="test", force=True, reason="e2e scenario")

        # 25 reviewed-or-not positives, queued two days ago: 6 approved, 14 rejected, 5 pending.
        image = np.zeros((36, 64, 3), np.uint8)
        outcomes = [
            Outcome("park", Frame("slides", image, now - timedelta(days=2, minutes=i)),
                    Prediction.from_probabilities({"grizzly": 0.8, "none": 0.2}, "builtin"),
                    Route(positive=True, review_reason=QueueReason.POSITIVE, alert=True))
            for i in range(25)
        ]
        with session_scope(engine) as session:
            ids = record_predictions(outcomes, session=session, snapshots=snapshots)
            session.execute(update(ReviewItem).values(created_at=now - timedelta(days=2)))
            session.commit()
            reviewer = create_user("alice", "a long enough password", session=session)
            for n, item_id in enumerate(ids[:20]):
                decide(item_id, session=session, reviewer=reviewer, action="approve" if n < 6 else "reject")
    finally:
        engine.dispose()


def _panel_queries() -> list[tuple[str, str]]:
    queries = []
    for path in sorted(GRAFANA.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                # the dashboards' only variable: every site
                queries.append((f"{path.name}: {panel['title']} [{target['refId']}]",
                                target["expr"].replace("$site", ".+")))
    return queries


def _rules() -> list[dict]:
    rules = []
    for path in (RULES, ALERTS):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    return rules


@pytest.mark.slow
def test_every_panel_and_rule_returns_data_from_a_real_prometheus(
    tmp_path, data_dir, model_cache, free_port, database_url
):
    clip = make_slideshow(tmp_path / "slides.mp4", _slides(data_dir, model_cache), seconds_each=2.0, cycles=2)
    config_data = {
        "database": database_url,
        "snapshots": str(tmp_path / "data" / "snapshots"),
        "model_cache": str(model_cache),
        "metrics": {"port": 0},
        "pipeline": {"batch_wait": "20ms"},
        "drift": {"interval": "2s", "windows": ["1h", "1d"], "min_predictions": 8, "min_baseline_alerts": 5,
                  "min_expected_alerts": 2, "episode_gap": "1s", "metrics_cache": "1s"},
        # A pager nobody answers: its alerts go dead after two tries (dead letters).
        "notify": {"targets": {"pager": {"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook",
                                         "secret": "e2e-secret", "timeout": "1s"}},
                   "retry": {"initial": "200ms", "max": "1s", "poll": "200ms", "max_attempts": 2}},
        "sites": [{"id": "park", "notify": ["pager"], "cameras": [
            {"id": "slides", "path": str(clip), "every": "1s", "loop": True},
            {"id": "dead", "url": f"rtsp://127.0.0.1:{free_port()}/none", "every": "1s", "open_timeout": "1s"},
        ]}],
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config_data))
    config = load_config(tmp_path / "monitor.yaml")
    _seed_history(config, datetime.now(timezone.utc), SnapshotStore(Path(config.snapshots)))

    monitor = RunningMonitor(["run", "-c", "monitor.yaml"], cwd=tmp_path)
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path / "prometheus", target=f"127.0.0.1:{monitor.port}", port=free_port())
        queries = _panel_queries()
        queries += [(f"rule {r.get('record') or r['alert']}: expr", r["expr"]) for r in _rules()]
        queries += [(f"rule {r['record']}: series", r["record"]) for r in _rules() if "record" in r]
        assert len(queries) > 60 and len(dict(queries)) == len(queries)  # names unique: none is skipped

        empty = dict(queries)
        deadline = time.monotonic() + 120
        while empty and time.monotonic() < deadline:
            for name, expr in list(empty.items()):
                if prometheus.query(expr):
                    del empty[name]
            time.sleep(1)
        assert not empty, (
            f"{len(empty)} of {len(queries)} queries returned no data:\n"
            + "\n".join(f"  {name}: {expr}" for name, expr in empty.items())
            + f"\n--- monitor log ---\n{monitor.log.read_text()[-3000:]}"
        )

        # The alerts fire for what the scenario provoked, and the rule file has no others.
        alert_names = {r["alert"] for r in _rules() if "alert" in r}
        assert alert_names == set(EXPECTED_ALERTS)
        silent = dict(EXPECTED_ALERTS)
        deadline = time.monotonic() + 30
        while silent and time.monotonic() < deadline:
            for name, labels in list(silent.items()):
                expr = next(r["expr"] for r in _rules() if r.get("alert") == name)
                if any(all(s["metric"].get(k) == v for k, v in labels.items()) for s in prometheus.query(expr)):
                    del silent[name]
            time.sleep(1)
        assert not silent, f"alerts whose expression never matched: {silent}"

        # Prometheus evaluated the rules itself without errors.
        rules_api = json.loads(http_get(f"{prometheus.url}/api/v1/rules"))
        health = {r["name"]: (r["health"], r.get("lastError", "")) for g in rules_api["data"]["groups"]
                  for r in g["rules"]}
        assert all(h == "ok" for h, _ in health.values()), health
    finally:
        if prometheus is not None:
            prometheus.stop()
        exit_code = monitor.stop()
    assert exit_code == 0, monitor.log.read_text()[-3000:]
