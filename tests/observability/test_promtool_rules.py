"""The Prometheus rules and Grafana dashboards as files: promtool checks them and runs
their unit tests, promtool lints a real /metrics scrape of a running monitor, every
alert has a summary, a description and a runbook section in the README, and the
dashboards are what their generator writes and import into Grafana 10+."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import LiveMonitor, build_core
from monitor.config import MonitorConfig
from monitor.sources.synthetic import make_clip
from observability_helpers import ALERTS, GRAFANA, PROMTOOL, REPO, RULES, have_prometheus
from running_monitor import http_get

needs_promtool = pytest.mark.skipif(bool(have_prometheus()), reason=have_prometheus() or "")
ALLOWED_LABELS = {"site", "camera", "label", "stage", "reason", "outcome", "kind", "window", "le", "worker", "target"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO)


@needs_promtool
def test_promtool_checks_the_rule_files():
    result = promtool("check", "rules", str(RULES), str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    tests = sorted((REPO / "dashboards" / "prometheus" / "tests").glob("*.yml"))
    assert len(tests) >= 2
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests would notice a wrong threshold (they are not vacuous)."""
    broken = tmp_path / "prometheus"
    (broken / "tests").mkdir(parents=True)
    (broken / "rules.yml").write_text(RULES.read_text())
    (broken / "alerts.yml").write_text(ALERTS.read_text().replace("> 0.5", "> 0.9"))
    test = REPO / "dashboards" / "prometheus" / "tests" / "alerts_test.yml"
    (broken / "tests" / "alerts_test.yml").write_text(test.read_text())
    result = subprocess.run([PROMTOOL, "test", "rules", "tests/alerts_test.yml"], cwd=broken, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "MonitorOutOfDomainSurge" in result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(("rule_file", "right", "wrong", "caught"), [
    ("alerts.yml", "max by (target) (monitor_outbox_dead) > 0", "sum by (target) (monitor_outbox_dead) > 0",
     "MonitorNotificationsDead"),
    ("rules.yml", "max by (target) (monitor_outbox_pending)", "sum by (target) (monitor_outbox_pending)",
     "target:monitor_outbox_pending:max"),
    ("rules.yml", "max by (site) (monitor_review_items_pending)", "sum by (site) (monitor_review_items_pending)",
     "site:monitor_review_items_pending:max"),
    ("rules.yml", "max by (site, outcome) (increase(monitor_review_decisions_total[1h]))",
     "sum by (site, outcome) (increase(monitor_review_decisions_total[1h]))", "monitor_review_decisions"),
    ("rules.yml", "sum by (target) (rate(monitor_notifications_delivered_total[5m]))",
     "max by (target) (rate(monitor_notifications_delivered_total[5m]))", "monitor_notifications_delivered"),
])
def test_promtool_unit_tests_catch_a_wrong_aggregation_over_workers(tmp_path, rule_file, right, wrong, caught):
    """With two workers, summing what both read from the database (or not summing what each
    counts) gives numbers the two-worker unit tests reject."""
    broken = tmp_path / "prometheus"
    (broken / "tests").mkdir(parents=True)
    for path in (RULES, ALERTS):
        text = path.read_text()
        if path.name == rule_file:
            assert right in text
            text = text.replace(right, wrong)
        (broken / path.name).write_text(text)
    for test in (REPO / "dashboards" / "prometheus" / "tests").glob("*.yml"):
        (broken / "tests" / test.name).write_text(test.read_text())
    result = subprocess.run([PROMTOOL, "test", "rules", "tests/alerts_test.yml", "tests/recording_test.yml"],
                            cwd=broken, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and caught in result.stdout + result.stderr


# Numbers every worker reads from the shared database and reports identically, and the
# counters each process keeps for itself (see dashboards/prometheus/rules.yml).
SHARED_GAUGES = (
    "monitor_review_items_pending", "monitor_review_oldest_pending_age_seconds", "monitor_reviewed_precision",
    "monitor_reviewed_positives", "monitor_review_decisions_total", "monitor_outbox_pending", "monitor_outbox_dead",
    "monitor_drift_flag", "monitor_drift_rate_ratio", "monitor_drift_baseline_alert_rate",
    "monitor_drift_confidence_psi", "monitor_drift_class_mix_distance", "monitor_drift_ood_ratio",
    "monitor_drift_last_run_timestamp_seconds", "monitor_site_stage",
)
PER_PROCESS_COUNTERS = (
    "monitor_frames_sampled_total", "monitor_frames_failed_total", "monitor_samples_dropped_total",
    "monitor_predictions_total", "monitor_review_items_queued_total", "monitor_alerts_total",
    "monitor_alert_episodes_total", "monitor_out_of_domain_frames_total", "monitor_source_reconnects_total",
    "monitor_notifications_delivered_total", "monitor_notification_failures_total",
    "monitor_notifications_dead_total", "monitor_drift_evaluations_total", "monitor_inference_seconds_bucket",
    "monitor_inference_batch_size_sum", "monitor_inference_batch_size_count", "monitor_decode_seconds_bucket",
)


def _every_expression() -> list[tuple[str, str]]:
    found = []
    for path in sorted(GRAFANA.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name}: {panel['title']}", target["expr"]) for target in panel["targets"]]
    for path in (RULES, ALERTS):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [(f"{path.name}: {r.get('record') or r['alert']}", r["expr"]) for r in group["rules"]]
    return found


def test_every_query_aggregates_over_workers_the_right_way():
    """Each raw series is aggregated right where it is used: database numbers by max/min
    (N workers report them N times), per-process counters by sum (after rate/increase)."""
    aggregation = r"(?:max|min|sum)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*(?:(?:rate|increase)\()?\s*$"
    wrong = []
    for name, expr in _every_expression():
        for metric in (*SHARED_GAUGES, *PER_PROCESS_COUNTERS):
            for match in re.finditer(rf"(?<![\w:]){metric}(?![\w:])", expr):
                outer = re.search(aggregation, expr[: match.start()])
                expected = ("sum",) if metric in PER_PROCESS_COUNTERS else ("max", "min")
                if outer is None or not outer.group(0).startswith(expected):
                    wrong.append(f"{name}: {metric} in {expr!r}")
    assert not wrong, "\n".join(wrong)
    assert len(_every_expression()) > 40


@pytest.fixture
def scrape(tmp_path, model_cache, free_port, database_url) -> str:
    """/metrics of a running monitor (in this process): a replayed clip, a dead camera,
    the drift detector and the review metrics."""
    clip = make_clip(tmp_path / "clip.mp4", seconds=20, fps=10, width=320, height=180)
    config = MonitorConfig(
        database=database_url, snapshots=tmp_path / "snapshots", model_cache=model_cache,
        metrics={"port": 0}, pipeline={"batch_wait": "20ms"},
        rollout={"routing": {"manual": {"negative_sample_rate": 1.0}}},
        drift={"interval": "1s", "metrics_cache": "1s"},
        sites=[{"id": "park", "cameras": [
            {"id": "clip", "path": str(clip), "every": "1s"},
            {"id": "dead", "url": f"rtsp://user:secret@127.0.0.1:{free_port()}/x", "every": "1s",
             "open_timeout": "1s"},
        ]}],
    )
    monitor = LiveMonitor(build_core(config, registry=CollectorRegistry(), live=True))
    monitor.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            text = http_get(f"http://127.0.0.1:{monitor.metrics_port}/metrics").decode()
            if ("monitor_drift_last_run_timestamp_seconds" in text and "monitor_review_items_pending{" in text
                    and "monitor_decode_seconds_count{" in text) or time.monotonic() > deadline:
                return text
            time.sleep(0.5)
    finally:
        monitor.stop()


@needs_promtool
def test_promtool_finds_nothing_to_lint_in_a_real_scrape(scrape):
    result = promtool("check", "metrics", stdin=scrape)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_scrape_has_every_metric_with_bounded_labels_only(scrape):
    families = {family.name: family for family in text_string_to_metric_families(scrape)}
    expected = {
        "monitor_frames_sampled", "monitor_frames_failed", "monitor_source_up", "monitor_source_reconnects",
        "monitor_decode_seconds", "monitor_inference_seconds", "monitor_inference_batch_size",
        "monitor_predictions", "monitor_positives", "monitor_alert_episodes", "monitor_alerts",
        "monitor_review_items_pending", "monitor_review_oldest_pending_age_seconds", "monitor_review_decisions",
        "monitor_reviewed_precision", "monitor_out_of_domain_frames", "monitor_drift_flag",
        "monitor_drift_last_run_timestamp_seconds", "monitor_drift_evaluations", "monitor_site_stage",
        "monitor_last_frame_age_seconds", "monitor_review_items_queued", "monitor_samples_dropped",
    }
    assert expected <= set(families), sorted(expected - set(families))
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)
            for value in sample.labels.values():
                # bounded values: ids and enum names, never a URL, a path or free text
                assert re.fullmatch(r"[A-Za-z0-9_.+-]*", value), (sample.name, sample.labels)
    assert "secret" not in scrape and "rtsp://" not in scrape


def _runbook_sections() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    assert "\n## Runbook\n" in text, "README.md has no '## Runbook' section"
    runbook = text.split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^### (\w+)\n(.*?)(?=^### |\Z)", runbook, re.S | re.M)}


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    sections = _runbook_sections()
    alerts = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook") == f"README.md#{name.lower()}", name
        assert alert.get("labels", {}).get("severity") in ("warning", "critical"), name
        assert name in sections and len(sections[name].split()) > 30, f"README runbook for {name} missing or thin"


def _generator():
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dashboards_are_what_their_generator_writes():
    rendered = _generator().render()
    on_disk = {path.name: path.read_text() for path in GRAFANA.glob("*.json")}
    assert on_disk == rendered, "run .venv/bin/python dashboards/grafana/generate.py and commit the JSON"


@pytest.mark.parametrize("name", ["overview.json", "drift.json", "reviews.json"])
def test_each_dashboard_imports_into_grafana_10(name):
    dashboard = json.loads((GRAFANA / name).read_text())
    assert dashboard["schemaVersion"] >= 38 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 6
    cells = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
