"""The JSON API under /api/v1 on a real SQLite file: list, filter, page, decide, undo, stats."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from monitor.store.tables import ReviewDecision, ReviewItem
from monitor.types import QueueReason

from review_helpers import CAMERA_PASSWORD, T0


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_list_pages_newest_first_by_keyset_without_gaps_or_repeats(alice, add_items):
    created = add_items(23)
    seen, before = [], None
    while True:
        query = "/api/v1/items?limit=5" + (f"&before={before}" if before else "")
        page = alice.client.get(query).json()
        seen += [item["id"] for item in page["items"]]
        before = page["older"]
        if before is None:
            break
    assert seen == sorted(created, reverse=True)
    # ... and back up again from the last page with `after`.
    last_page = alice.client.get(f"/api/v1/items?limit=5&before={created[3]}").json()
    assert [i["id"] for i in last_page["items"]] == [created[2], created[1], created[0]]
    newer = alice.client.get(f"/api/v1/items?limit=5&after={last_page['newer']}").json()
    assert [i["id"] for i in newer["items"]] == sorted(created[3:8], reverse=True)


def test_list_filters_by_site_camera_label_status_reason_and_time(alice, add_items):
    gate = add_items(3, camera_id="gate", label="grizzly")
    trail = add_items(2, camera_id="trail", label="black", start=T0 + timedelta(hours=1))
    lake = add_items(2, camera_id="lake", label="none", reason=QueueReason.NEGATIVE_SAMPLE,
                     start=T0 + timedelta(hours=2))
    get = alice.client.get
    assert sorted(ids(get("/api/v1/items?site=north"))) == sorted(gate + trail)
    assert sorted(ids(get("/api/v1/items?camera=trail"))) == sorted(trail)
    assert sorted(ids(get("/api/v1/items?label=none"))) == sorted(lake)
    assert sorted(ids(get("/api/v1/items?reason=negative_sample"))) == sorted(lake)
    since = (T0 + timedelta(minutes=30)).isoformat()
    until = (T0 + timedelta(hours=2)).isoformat()
    assert sorted(ids(get("/api/v1/items", params={"since": since, "until": until}))) == sorted(trail)
    alice.post_json(f"/api/v1/items/{gate[0]}/decision", {"action": "approve"})
    assert ids(get("/api/v1/items?status=approved")) == [gate[0]]
    assert gate[0] not in ids(get("/api/v1/items?status=pending"))


@pytest.mark.parametrize("query", ["status=nonsense", "reason=bored", "limit=0", "limit=501", "since=yesterday"])
def test_bad_list_parameters_are_422(alice, query):
    assert alice.client.get(f"/api/v1/items?{query}").status_code == 422


def test_get_one_item_with_its_history_and_snapshot(alice, add_items, snapshots, engine):
    (item_id,) = add_items(1)
    alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "relabel", "label": "black", "note": "brown phase"})
    body = alice.client.get(f"/api/v1/items/{item_id}").json()
    assert body["status"] == "relabelled" and body["review_label"] == "black" and body["version"] == 1
    assert "snapshot" not in body  # no file-system paths in the API
    (entry,) = body["history"]
    assert entry["reviewer"] == "alice" and entry["action"] == "relabel" and entry["note"] == "brown phase"
    assert entry["previous_status"] == "pending" and entry["status"] == "relabelled"
    picture = alice.client.get(body["snapshot_url"])
    with Session(engine) as session:
        relative = session.get(ReviewItem, item_id).snapshot
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert picture.content == snapshots.resolve(relative).read_bytes()
    assert alice.client.get("/api/v1/items/999999").status_code == 404
    assert alice.client.get("/api/v1/items/999999/snapshot").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "label"),
    [
        ({"action": "approve"}, "approved", None),
        ({"action": "reject", "note": "a dog"}, "rejected", None),
        ({"action": "relabel", "label": "sloth"}, "relabelled", "sloth"),
    ],
)
def test_decisions_change_the_item_and_append_history(alice, add_items, engine, body, status, label):
    (item_id,) = add_items(1)
    response = alice.post_json(f"/api/v1/items/{item_id}/decision", {**body, "version": 0})
    assert response.status_code == 200, response.text
    assert response.json()["item"]["status"] == status and response.json()["item"]["version"] == 1
    with Session(engine) as session:
        item = session.get(ReviewItem, item_id)
        (decision,) = session.exec(select(ReviewDecision)).all()
    assert (item.status, item.review_label, item.version) == (status, label, 1)
    assert item.reviewed_at is not None
    assert (decision.reviewer, decision.action, decision.previous_status, decision.status) == (
        "alice", body["action"], "pending", status)


@pytest.mark.parametrize(
    "body",
    [
        {"action": "relabel"},  # no label
        {"action": "relabel", "label": "unicorn"},  # not a known class
        {"action": "approve", "label": "black"},  # a label without relabel
        {"action": "maybe"},
        {"action": "approve", "note": "x" * 2001},
    ],
)
def test_bad_decisions_are_422_and_change_nothing(alice, add_items, engine, body):
    (item_id,) = add_items(1)
    assert alice.post_json(f"/api/v1/items/{item_id}/decision", body).status_code == 422
    with Session(engine) as session:
        assert session.get(ReviewItem, item_id).status == "pending"
        assert session.exec(select(ReviewDecision)).all() == []


def test_a_stale_version_is_a_409_with_the_current_state_and_nothing_is_overwritten(reviewer, add_items, engine):
    (item_id,) = add_items(1)
    alice = reviewer("alice")
    assert alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "reject", "version": 0}).status_code == 200
    # bob loaded the item at version 0 too and approves it afterwards
    bob = reviewer("bob")
    late = bob.post_json(f"/api/v1/items/{item_id}/decision", {"action": "approve", "version": 0})
    assert late.status_code == 409
    assert late.json()["current"]["status"] == "rejected" and late.json()["current"]["version"] == 1
    # without a version a decided item is never overwritten either
    assert bob.post_json(f"/api/v1/items/{item_id}/decision", {"action": "approve"}).status_code == 409
    with Session(engine) as session:
        assert session.get(ReviewItem, item_id).status == "rejected"
        assert [d.reviewer for d in session.exec(select(ReviewDecision)).all()] == ["alice"]
    # with the current version bob may change it, and that is recorded
    ok = bob.post_json(f"/api/v1/items/{item_id}/decision", {"action": "approve", "version": 1})
    assert ok.status_code == 200 and ok.json()["decision"]["previous_status"] == "rejected"


def test_undo_is_a_stack_and_is_recorded(alice, add_items, engine):
    (item_id,) = add_items(1)
    alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "approve", "version": 0})
    alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "relabel", "label": "black", "version": 1})
    first = alice.post_json(f"/api/v1/items/{item_id}/undo", {"version": 2}).json()["item"]
    assert (first["status"], first["review_label"], first["version"]) == ("approved", None, 3)
    second = alice.post_json(f"/api/v1/items/{item_id}/undo", {"version": 3}).json()["item"]
    assert (second["status"], second["reviewed_at"], second["version"]) == ("pending", None, 4)
    nothing = alice.post_json(f"/api/v1/items/{item_id}/undo", {"version": 4})
    assert nothing.status_code == 409 and nothing.json()["current"]["status"] == "pending"
    stale = alice.post_json(f"/api/v1/items/{item_id}/undo", {"version": 1})
    assert stale.status_code == 409
    with Session(engine) as session:
        history = session.exec(select(ReviewDecision).order_by(ReviewDecision.id)).all()
    assert [(d.action, d.status, d.undoes_id) for d in history] == [
        ("approve", "approved", None), ("relabel", "relabelled", None),
        ("undo", "approved", history[1].id), ("undo", "pending", history[0].id),
    ]


def test_bulk_approve_reports_conflicts_and_missing_items(alice, reviewer, add_items):
    a, b, c = add_items(3)
    reviewer("bob").post_json(f"/api/v1/items/{b}/decision", {"action": "reject"})
    result = alice.post_json("/api/v1/items/bulk-approve",
                             {"items": [{"id": a, "version": 0}, {"id": b, "version": 0}, {"id": c}, {"id": 424242}]})
    assert result.status_code == 200, result.text
    body = result.json()
    assert sorted(i["id"] for i in body["decided"]) == [a, c]
    assert [i["id"] for i in body["conflicts"]] == [b] and body["conflicts"][0]["status"] == "rejected"
    assert body["missing"] == [424242]


def test_stats_count_pending_decisions_per_reviewer_and_precision(reviewer, add_items):
    gate = add_items(4, camera_id="gate", label="grizzly")
    add_items(2, camera_id="lake", label="none", reason=QueueReason.NEGATIVE_SAMPLE)
    alice = reviewer("alice")
    for item_id, action in zip(gate[:3], ["approve", "approve", "reject"]):
        alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": action})
    bob = reviewer("bob")
    bob.post_json(f"/api/v1/items/{gate[3]}/decision", {"action": "relabel", "label": "black"})
    bob.post_json(f"/api/v1/items/{gate[3]}/undo", {})
    stats = bob.client.get("/api/v1/stats").json()
    assert stats["pending"] == 3
    assert stats["by_status"] == {"pending": 3, "approved": 2, "rejected": 1, "relabelled": 0}
    assert stats["decisions_by_reviewer"]["alice"] == {"approve": 2, "reject": 1, "relabel": 0, "undo": 0}
    assert stats["decisions_by_reviewer"]["bob"] == {"approve": 0, "reject": 0, "relabel": 1, "undo": 1}
    (row,) = stats["precision"]  # negative samples are not positives
    assert (row["site_id"], row["camera_id"], row["label"], row["reviewed"]) == ("north", "gate", "grizzly", 3)
    assert row["precision"] == pytest.approx(2 / 3)


def test_token_clients_decide_without_csrf_and_are_recorded_as_their_user(client, add_items, api_token, engine):
    (item_id,) = add_items(1)
    headers = {"Authorization": f"Bearer {api_token('bob')}"}
    response = client.post(f"/api/v1/items/{item_id}/decision", json={"action": "approve"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["decision"]["reviewer"] == "bob"


def test_cameras_api_redacts_urls_and_reports_unknown_state_without_sources(alice):
    cameras = {c["id"]: c for c in alice.client.get("/api/v1/cameras").json()}
    assert cameras["gate"]["url"] == "rtsp://***@10.0.0.5/live"
    assert cameras["gate"]["up"] is None
    assert CAMERA_PASSWORD not in alice.client.get("/api/v1/cameras").text


def test_openapi_documents_the_api_and_metrics_need_no_sign_in(client):
    spec = client.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/items", "/api/v1/items/{item_id}/decision", "/api/v1/items/{item_id}/undo",
                 "/api/v1/stats", "/api/v1/items/{item_id}/snapshot"):
        assert path in spec["paths"], path
    assert "409" in spec["paths"]["/api/v1/items/{item_id}/decision"]["post"]["responses"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")


def test_classify_refuses_what_it_cannot_read_and_says_when_no_model_is_loaded(alice, web_config):
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buffer, format="PNG")
    headers = {"X-CSRF-Token": alice.csrf}
    garbage = alice.client.post("/api/v1/classify", files={"file": ("x.jpg", b"not an image", "image/jpeg")},
                                headers=headers)
    assert garbage.status_code == 415
    too_big = b"\xff" * (web_config.web.max_upload_bytes + 1)
    assert alice.client.post("/api/v1/classify", files={"file": ("x.jpg", too_big, "image/jpeg")},
                             headers=headers).status_code == 413
    no_model = alice.client.post("/api/v1/classify", files={"file": ("x.png", buffer.getvalue(), "image/png")},
                                 headers=headers)
    assert no_model.status_code == 503 and "no model" in no_model.json()["detail"]


def test_cameras_show_live_state_and_last_error_without_credentials(engine, snapshots, web_config, users):
    from datetime import datetime, timezone

    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from monitor.types import SourceStatus
    from monitor.web import create_web_app
    from review_helpers import sign_in

    seen = datetime(2026, 7, 1, 12, 0, 5, tzinfo=timezone.utc)
    sources = {
        "gate": ("north", SourceStatus("gate", up=False, reconnects=3,
                                       last_error=f"cannot open rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5/live: timeout")),
        "trail": ("north", SourceStatus("trail", up=True, last_frame_at=seen)),
    }
    app = create_web_app(engine=engine, snapshots=snapshots, registry=CollectorRegistry(), config=web_config,
                         sources=sources)
    with TestClient(app) as client:
        reviewer = sign_in(client, "alice")
        cameras = {c["id"]: c for c in reviewer.client.get("/api/v1/cameras").json()}
        page = reviewer.client.get("/cameras").text
    assert (cameras["gate"]["up"], cameras["gate"]["reconnects"]) == (False, 3)
    assert cameras["gate"]["last_error"] == "cannot open rtsp://***@10.0.0.5/live: timeout"
    assert cameras["trail"]["up"] is True and cameras["trail"]["last_frame_at"].startswith("2026-07-01T12:00:05")
    assert cameras["lake"]["up"] is None  # configured but not sampled by this process
    assert CAMERA_PASSWORD not in page and "2026-07-01 12:00:05 UTC" in page
    assert '<span class="badge down">down</span>' in page and '<span class="badge up">up</span>' in page
