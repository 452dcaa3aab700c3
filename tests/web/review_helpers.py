"""Helpers shared by the review UI tests (imported by tests/web/conftest.py and the tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from fastapi.testclient import TestClient

from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

PASSWORDS = {"alice": "alice-pass-123", "bob": "bob-pass-4567"}
CAMERA_PASSWORD = "cam-s3cret"  # in the gate camera's URL (see conftest.web_config)
HOSTILE_NAME = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
CAMERA_SITE = {"gate": "north", "trail": "north", "lake": "south"}


def outcome(
    *,
    camera_id: str = "gate",
    captured_at: datetime = T0,
    label: str = "grizzly",
    confidence: float = 0.9,
    reason: QueueReason = QueueReason.POSITIVE,
    seed: int = 0,
    crop: tuple[int, int, int, int] | None = None,
) -> Outcome:
    others = [name for name in LABELS if name != label]
    probabilities = {label: confidence, **{name: (1.0 - confidence) / len(others) for name in others}}
    image = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return Outcome(
        site_id=CAMERA_SITE[camera_id],
        frame=Frame(camera_id=camera_id, image=image, captured_at=captured_at),
        prediction=Prediction(label, confidence, probabilities, "test-model@1", crop=crop),
        route=Route(positive=reason is QueueReason.POSITIVE, review_reason=reason),
    )


@dataclass
class SignedIn:
    """A browser-like client after signing in, with the session's CSRF token."""

    client: TestClient
    csrf: str

    def post_json(self, url: str, body: dict, *, csrf: bool = True):
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return self.client.post(url, json=body, headers=headers)


def page_csrf(html: str) -> str:
    found = re.search(r'data-csrf="([^"]*)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: TestClient, name: str, password: str | None = None) -> SignedIn:
    """Sign in through the real form (login CSRF cookie included)."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"username": name, "password": password or PASSWORDS[name],
                                           "csrf_token": token, "next": "/queue"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return SignedIn(client, page_csrf(client.get("/queue").text))
