"""Security of the review UI: sign-in, sessions, CSRF, API tokens, path traversal, escaping.

Every refusal is checked together with its effect: the database must be unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlmodel import Session, select

from monitor.store import session_scope
from monitor.store.tables import ReviewDecision, ReviewItem, User, WebSession
from monitor.store.users import revoke_api_token
from monitor.web import create_web_app
from db_backends import dump_text
from review_helpers import CAMERA_PASSWORD, HOSTILE_NAME, PASSWORDS


def decisions(engine) -> list[ReviewDecision]:
    with Session(engine) as session:
        return list(session.exec(select(ReviewDecision)).all())


def status_of(engine, item_id: int) -> str:
    with Session(engine) as session:
        return session.get(ReviewItem, item_id).status


# ---------------------------------------------------------------- no identity -> 401


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/api/v1/items/{id}/decision", {"json": {"action": "approve"}}),
        ("post", "/api/v1/items/{id}/undo", {"json": {}}),
        ("post", "/api/v1/items/bulk-approve", {"json": {"items": [{"id": 1}]}}),
        ("get", "/api/v1/items", {}),
        ("get", "/api/v1/items/{id}/snapshot", {}),
        ("get", "/api/v1/stats", {}),
        ("post", "/items/{id}/decide", {"data": {"action": "approve", "csrf_token": "x"}}),
        ("post", "/queue/bulk-approve", {"data": {"item": "{id}:0", "csrf_token": "x"}}),
    ],
)
def test_without_a_session_nothing_is_read_or_decided(client, add_items, engine, method, path, kwargs):
    (item_id,) = add_items(1)
    response = getattr(client, method)(path.replace("{id}", str(item_id)), **kwargs)
    assert response.status_code == 401
    assert status_of(engine, item_id) == "pending" and decisions(engine) == []


def test_pages_redirect_to_sign_in_and_back(client):
    response = client.get("/queue?status=approved", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fqueue%3Fstatus%3Dapproved"


def test_a_bad_or_revoked_token_is_401(client, add_items, api_token, engine):
    (item_id,) = add_items(1)
    for header in ("Bearer mon_not-a-token", "Bearer ", "Basic YWxpY2U6YWxpY2UtcGFzcy0xMjM="):
        response = client.post(f"/api/v1/items/{item_id}/decision", json={"action": "approve"},
                               headers={"Authorization": header})
        assert response.status_code == 401, header
    token = api_token("alice")
    with session_scope(engine) as session:
        assert revoke_api_token(1, session=session)
    response = client.post(f"/api/v1/items/{item_id}/decision", json={"action": "approve"},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and decisions(engine) == []


# ---------------------------------------------------------------- CSRF -> 403


def test_cookie_api_calls_without_the_csrf_header_are_403(alice, add_items, engine):
    (item_id,) = add_items(1)
    assert alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "approve"}, csrf=False).status_code == 403
    wrong = alice.client.post(f"/api/v1/items/{item_id}/decision", json={"action": "approve"},
                              headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    assert status_of(engine, item_id) == "pending" and decisions(engine) == []


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/items/{id}/decide", {"action": "approve", "version": "0"}),
        ("/items/{id}/undo", {"version": "0"}),
        ("/queue/bulk-approve", {"item": "{id}:0"}),
    ],
)
def test_form_posts_without_the_csrf_token_are_403(alice, add_items, engine, path, data, csrf):
    (item_id,) = add_items(1)
    form = {k: v.replace("{id}", str(item_id)) for k, v in data.items()}
    if csrf is not None:
        form["csrf_token"] = csrf
    response = alice.client.post(path.replace("{id}", str(item_id)), data=form, follow_redirects=False)
    assert response.status_code == 403
    assert status_of(engine, item_id) == "pending" and decisions(engine) == []
    # the same form with the session's token goes through (the test above is not vacuous)
    form["csrf_token"] = alice.csrf
    if path != "/items/{id}/undo":
        assert alice.client.post(path.replace("{id}", str(item_id)), data=form,
                                 follow_redirects=False).status_code == 303
        assert status_of(engine, item_id) == "approved"


def test_sign_out_needs_csrf_and_really_ends_the_session(alice, engine):
    assert alice.client.post("/logout", data={}, follow_redirects=False).status_code == 403
    cookie = alice.client.cookies.get("monitor_session")
    assert alice.client.post("/logout", data={"csrf_token": alice.csrf}, follow_redirects=False).status_code == 303
    with Session(engine) as session:
        assert session.exec(select(WebSession)).all() == []
    # replaying the old cookie does not work
    alice.client.cookies.set("monitor_session", cookie)
    assert alice.client.get("/api/v1/items").status_code == 401


def test_sign_in_form_needs_its_own_csrf_cookie(client):
    response = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"],
                                           "csrf_token": "made-up"}, follow_redirects=False)
    assert response.status_code == 403 and "monitor_session" not in response.cookies


# ---------------------------------------------------------------- sign-in, cookies, passwords


def test_wrong_password_or_unknown_user_gets_no_session(client):
    for name, password in (("alice", "wrong-password"), ("mallory", "whatever-123")):
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        response = client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                               follow_redirects=False)
        assert response.status_code == 401 and "Wrong name or password" in response.text
        assert "monitor_session" not in response.cookies


def test_session_cookie_is_httponly_samesite_lax_and_secure_when_configured(engine, snapshots, web_config, users):
    for secure in (False, True):
        config = web_config.model_copy(update={"web": web_config.web.model_copy(update={"secure_cookies": secure})})
        app = create_web_app(engine=engine, snapshots=snapshots, registry=CollectorRegistry(), config=config)
        with TestClient(app, base_url="https://testserver") as https_client:
            form = https_client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            response = https_client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"],
                                                          "csrf_token": token}, follow_redirects=False)
        cookie = next(v for v in response.headers.get_list("set-cookie") if v.startswith("monitor_session="))
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert "httponly" in attributes and "samesite=lax" in attributes
        assert ("secure" in attributes) is secure


def test_only_hashes_of_passwords_and_tokens_are_stored(engine, api_token, alice, web_config):
    token = api_token("alice")
    with Session(engine) as session:
        user = session.exec(select(User).where(User.name == "alice")).one()
        assert user.password_hash.startswith("$argon2id$")
    if web_config.database.startswith("sqlite:///"):
        database = web_config.database.removeprefix("sqlite:///")
        with engine.connect() as connection:
            connection.execute(text("PRAGMA wal_checkpoint(FULL)"))
        stored = b"".join(p.read_bytes() for p in Path(database).parent.glob("monitor.db*"))
    else:  # PostgreSQL: every row of every table, as text
        stored = dump_text(web_config.database).encode()
    for secret in (PASSWORDS["alice"], token, alice.client.cookies.get("monitor_session"), CAMERA_PASSWORD):
        assert secret.encode() not in stored


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "queue"])
def test_sign_in_never_redirects_off_site(client, target):
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"],
                                           "csrf_token": token, "next": target}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/queue"


# ---------------------------------------------------------------- snapshots: no way out of the folder


@pytest.mark.parametrize(
    "path",
    [
        "/snapshots/..%2F..%2Fmonitor.db",
        "/snapshots/north/..%2F..%2F..%2Fmonitor.db",
        "/snapshots/%2Fetc%2Fpasswd",
        "/snapshots/%2e%2e/%2e%2e/monitor.db",
        "/snapshots/C:%5Cwindows%5Cwin.ini",
    ],
)
def test_snapshot_paths_with_dotdot_or_absolute_are_404(alice, add_items, path):
    add_items(1)
    response = alice.client.get(path)
    assert response.status_code == 404
    # the route itself refused (not merely an unknown URL)
    assert "no such snapshot" in response.text


def test_an_item_whose_stored_path_escapes_the_folder_is_404(alice, add_items, engine, web_config):
    (item_id,) = add_items(1)
    for hostile in ("../monitor.db", "/etc/passwd"):
        with session_scope(engine) as session:
            session.exec(select(ReviewItem).where(ReviewItem.id == item_id)).one().snapshot = hostile
        response = alice.client.get(f"/api/v1/items/{item_id}/snapshot")
        assert response.status_code == 404 and b"SQLite" not in response.content


def test_a_real_snapshot_is_served(alice, add_items, engine, snapshots):
    (item_id,) = add_items(1)
    with Session(engine) as session:
        relative = session.get(ReviewItem, item_id).snapshot
    response = alice.client.get(f"/snapshots/{relative}")
    assert response.status_code == 200 and response.content == snapshots.resolve(relative).read_bytes()


# ---------------------------------------------------------------- markup is shown as text


def test_markup_in_camera_names_and_notes_is_escaped_everywhere(alice, add_items):
    (item_id,) = add_items(1, camera_id="gate")
    note = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    alice.post_json(f"/api/v1/items/{item_id}/decision", {"action": "reject", "note": note})
    pages = {path: alice.client.get(path).text for path in ("/queue?status=all", f"/items/{item_id}", "/cameras")}
    for path, html in pages.items():
        assert "<script>document.title" not in html and '<img src=x onerror="document.title' not in html, path
        assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html, path
    detail = pages[f"/items/{item_id}"]
    assert "<script>alert(2)" not in detail and "&lt;script&gt;alert(2)&lt;/script&gt;" in detail
    assert HOSTILE_NAME not in "".join(pages.values())


def test_pages_send_a_strict_content_security_policy(alice):
    response = alice.client.get("/queue")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
