"""Rollout status and history on the web, promote and rollback through the API."""

from __future__ import annotations

from rollout.store import init_rollout_schema


def test_rollout_page_and_api(engine, alice, client):
    init_rollout_schema(engine)
    assert client.post("/api/v1/rollout/north/promote", json={}).status_code == 401  # signed out

    refused = alice.post_json("/api/v1/rollout/north/promote", {})
    assert refused.status_code == 409
    assert refused.json()["gates"]["verdict"] == "INSUFFICIENT DATA"  # sparse data never passes

    forced = alice.post_json("/api/v1/rollout/north/promote", {"force": True, "reason": "pilot <b>week</b>"})
    assert forced.status_code == 200, forced.text
    assert (forced.json()["from"], forced.json()["to"], forced.json()["actor"]) == ("manual", "limited", "alice")
    assert alice.client.get("/api/v1/rollout/north").json()["stage"] == "limited"

    back = alice.post_json("/api/v1/rollout/north/rollback", {"reason": "too many false alarms"})
    assert back.status_code == 200 and back.json()["to"] == "manual"
    history = alice.client.get("/api/v1/rollout/north/history").json()
    assert [e["action"] for e in history][:2] == ["rollback", "promote"]

    page = alice.client.get("/rollout").text
    assert "precision" in page and "too many false alarms" in page
    assert "pilot &lt;b&gt;week&lt;/b&gt;" in page  # reasons are shown as text
    assert alice.client.get("/api/v1/rollout/nowhere").status_code == 404
