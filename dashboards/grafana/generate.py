"""Write the Grafana dashboards (overview, per-site drift and stage, review work) as JSON.

The JSON files beside this script are what Grafana imports (Dashboards > New > Import,
or file provisioning); this script is how they are edited: change a panel here, run
``.venv/bin/python dashboards/grafana/generate.py``, commit both. A test checks the two
agree, and tests/observability/test_prometheus_e2e.py runs every panel's query against
a real Prometheus scraping a real `monitor run`.

Each dashboard picks its Prometheus through a ``datasource`` variable (so it imports
into Grafana 10+ without editing) and its sites through a ``site`` variable.

Every query aggregates over the workers that export a series (each `monitor run
--worker NAME` serves its own /metrics with a ``worker`` label): per-process counters
are summed; gauges every worker reads from the shared database (review queue, outbox,
drift numbers, stages) are max'ed first, so N workers do not count them N times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SITE = 'site=~"$site"'


def _templating() -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                "current": {}, "hide": 0, "refresh": 1, "options": [],
            },
            {
                "name": "site", "label": "Site", "type": "query", "datasource": DATASOURCE,
                "query": {"query": "label_values(monitor_site_stage, site)", "refId": "site"},
                "definition": "label_values(monitor_site_stage, site)",
                "includeAll": True, "multi": True, "allValue": ".+", "current": {}, "refresh": 2, "sort": 1,
                "options": [],
            },
        ]
    }


def _panel(title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
           description: str = "", width: int = 12, height: int = 8) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "type": kind,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "gridPos": {"w": width, "h": height},
    }


def _dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    x = y = 0
    row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if x + grid["w"] > 24:
            x, y = 0, y + row_height
            row_height = 0
        grid.update(x=x, y=y)
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        panel["id"] = panel_id
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["bear-monitor"],
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _templating(),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    return _dashboard("bear-monitor-overview", "Bear monitor: overview", "Cameras, sampling, inference, alerts", [
        _panel("Cameras up", [(f"site_camera:monitor_source_up:max{{{SITE}}}", "{{site}} / {{camera}}")],
               kind="stat", width=8, description="1 while the camera delivers frames"),
        _panel("Age of the last frame", [(f"site_camera:monitor_last_frame_age_seconds:min{{{SITE}}}",
                                          "{{site}} / {{camera}}")], unit="s", width=8),
        # max first: during a hand-over of the drift job two workers may report the same flag.
        _panel("Open drift flags", [(f"sum by (site) (max by (site, camera, kind) (monitor_drift_flag{{{SITE}}}))",
                                     "{{site}}")], kind="stat", width=8),
        _panel("Stills sampled per second", [(f"site_camera:monitor_frames_sampled:rate5m{{{SITE}}}",
                                              "{{site}} / {{camera}}")], unit="ops"),
        _panel("Stills failed and dropped per second", [
            (f"site_camera:monitor_frames_failed:rate5m{{{SITE}}}", "failed {{site}} / {{camera}}"),
            (f"sum by (site, camera) (rate(monitor_samples_dropped_total{{{SITE}}}[5m]))", "dropped {{site}} / {{camera}}"),
        ], unit="ops"),
        _panel("Predictions per label", [
            (f"sum by (label) (rate(monitor_predictions_total{{{SITE}}}[5m]))", "{{label}}")], unit="ops"),
        _panel("Alerts per hour by stage", [
            (f"3600 * site_stage:monitor_alerts:rate1h{{{SITE}}}", "{{site}} ({{stage}})")]),
        _panel("Inference time per batch (p95) and batch size", [
            ("job:monitor_inference_seconds:p95_5m", "p95 seconds"),
            ("sum(rate(monitor_inference_batch_size_sum[5m])) / sum(rate(monitor_inference_batch_size_count[5m]))",
             "mean batch size"),
        ]),
        _panel("Decode time per poll (p95)", [(f"site_camera:monitor_decode_seconds:p95_5m{{{SITE}}}",
                                               "{{site}} / {{camera}}")], unit="s"),
        _panel("Stills waiting for the classifier", [("sum(monitor_sample_queue_depth)", "queued")]),
        _panel("Out-of-domain share by signal", [
            (f"site_camera_reason:monitor_out_of_domain_share:ratio_rate15m{{{SITE}}}",
             "{{site}} / {{camera}}: {{reason}}")], unit="percentunit"),
        _panel("Reconnects per hour", [
            (f"3600 * sum by (site, camera) (rate(monitor_source_reconnects_total{{{SITE}}}[1h]))",
             "{{site}} / {{camera}}")]),
        _panel("Notifications per minute by target", [
            ("60 * target:monitor_notifications_delivered:rate5m", "delivered {{target}}"),
            ("60 * target:monitor_notification_failures:rate5m", "failed tries {{target}}"),
        ], description="per-process counters, summed over workers"),
        _panel("Alerts waiting for delivery, and dead", [
            ("target:monitor_outbox_pending:max", "waiting {{target}}"),
            ("target:monitor_outbox_dead:max", "dead {{target}}"),
        ], description="read from the database by every worker (max, not sum); dead alerts wait for "
                       "`monitor notify retry` or `discard`"),
    ])


def drift() -> dict[str, Any]:
    return _dashboard("bear-monitor-drift", "Bear monitor: drift and stage per site",
                      "Each site's rollout stage, its alert rate against the manual-stage baseline, drift flags", [
        _panel("Stage", [(f"max by (site, stage) (monitor_site_stage{{{SITE}}}) == 1", "{{site}}: {{stage}}")],
               kind="table", width=8),
        _panel("Open drift flags", [(f"max by (site, camera, kind) (monitor_drift_flag{{{SITE}}}) == 1",
                                     "{{site}} / {{camera}}: {{kind}}")], kind="table", width=16),
        _panel("Alert rate over baseline (last day)", [
            (f"site_camera:monitor_alert_rate_vs_baseline:ratio1d{{{SITE}}}", "{{site}} / {{camera}}")],
            description="alert episodes per still in the last day over the manual-stage baseline; "
                        "the detector flags >= 1.5x or <= 0.67x when significant"),
        _panel("Rate ratio per window (drift detector)", [
            (f"max by (site, camera, window) (monitor_drift_rate_ratio{{{SITE}}})", "{{site}} / {{camera}} {{window}}")]),
        _panel("Alert episodes per day", [
            (f"86400 * sum by (site, camera) (rate(monitor_alert_episodes_total{{{SITE}}}[1h]))",
             "now {{site}} / {{camera}}"),
            (f"86400 * max by (site, camera) (monitor_drift_baseline_alert_rate{{{SITE}}})"
             f" * on (site, camera) group_left site_camera:monitor_predictions:rate5m", "baseline {{site}} / {{camera}}"),
        ]),
        _panel("Confidence PSI", [(f"max by (site, camera) (monitor_drift_confidence_psi{{{SITE}}})",
                                   "{{site}} / {{camera}}")], width=8),
        _panel("Class-mix distance", [(f"max by (site, camera) (monitor_drift_class_mix_distance{{{SITE}}})",
                                       "{{site}} / {{camera}}")], width=8),
        _panel("Out-of-domain share over baseline", [(f"max by (site, camera) (monitor_drift_ood_ratio{{{SITE}}})",
                                                      "{{site}} / {{camera}}")], width=8),
        _panel("Drift evaluations", [("sum by (outcome) (increase(monitor_drift_evaluations_total[1h]))",
                                      "{{outcome}}")]),
        _panel("Since the last drift evaluation", [("time() - max(monitor_drift_last_run_timestamp_seconds)", "age")],
               unit="s"),
    ])


def reviews() -> dict[str, Any]:
    return _dashboard("bear-monitor-reviews", "Bear monitor: review work", "The review queue and what it says", [
        _panel("Pending reviews", [(f"site:monitor_review_items_pending:max{{{SITE}}}", "{{site}}")], width=8),
        _panel("Oldest pending review", [(f"max by (site) (monitor_review_oldest_pending_age_seconds{{{SITE}}})",
                                          "{{site}}")], unit="s", width=8),
        _panel("Reviewed precision", [(f"min by (site) (monitor_reviewed_precision{{{SITE}}})", "{{site}}")],
               unit="percentunit", width=8),
        _panel("Decisions per hour by outcome", [
            (f"site_outcome:monitor_review_decisions:increase1h{{{SITE}}}", "{{site}}: {{outcome}}")]),
        _panel("Stills queued per hour by reason", [
            (f"3600 * sum by (site, reason) (rate(monitor_review_items_queued_total{{{SITE}}}[1h]))",
             "{{site}}: {{reason}}")]),
        _panel("Reviewed positives in the window", [(f"max by (site) (monitor_reviewed_positives{{{SITE}}})",
                                                     "{{site}}")]),
    ])


DASHBOARDS = {"overview.json": overview, "drift.json": drift, "reviews.json": reviews}


def render() -> dict[str, str]:
    """File name -> the JSON text it should hold."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
