"""The review UI in a real browser (Debian's Chromium driven by Playwright).

A reviewer signs in, works through the queue with the keyboard (approve, reject, relabel
with a number key, undo, j/k), bulk-approves a selection, opens an item, classifies a
photo with the real built-in model, looks at cameras and stats, and signs out. The
database must then hold exactly those decisions. Markup in a camera name must stay text,
the page must run under its Content-Security-Policy without errors, and a screenshot of
every page is saved under test-artifacts/screenshots/.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlmodel import Session, select

from monitor.model import load_model
from monitor.store.tables import ReviewDecision, ReviewItem
from monitor.types import QueueReason
from monitor.web import create_web_app
from review_helpers import PASSWORDS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)")


@pytest.fixture
def app(engine, snapshots, web_config, users, model_cache):
    """The app with the real built-in model, so the classify page really classifies."""
    classifier = load_model("builtin:imagenet-bears", cache_dir=model_cache)
    return create_web_app(engine=engine, snapshots=snapshots, registry=CollectorRegistry(), config=web_config,
                          classifier=classifier)


@pytest.fixture
def page(live_server) -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_server, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.problems = []  # console errors (a CSP violation is one), uncaught exceptions, failed requests
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
        yield page
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def photo_bytes() -> tuple[str, bytes]:
    """A real grizzly photo from the shared data when present, else a generated picture."""
    data = Path(os.environ.get("MONITOR_TEST_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    photos = sorted((data / "bears" / "grizzly").glob("*.jpg"))
    if photos:
        return photos[0].name, photos[0].read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(np.full((120, 160, 3), (120, 80, 40), np.uint8)).save(buffer, format="JPEG")
    return "generated.jpg", buffer.getvalue()


def wait_for_line(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('status-line').textContent.includes(t)", arg=text)


def test_a_reviewer_works_through_the_queue_with_the_keyboard(page, app, engine, add_items):
    second_class = app.state.ctx.labels[1]  # what the "2" key relabels to
    older = add_items(2, camera_id="lake", label="none", reason=QueueReason.NEGATIVE_SAMPLE)
    newer = add_items(4, camera_id="gate", label="grizzly")
    cards = sorted(older + newer, reverse=True)  # the queue shows newest first

    # Sign in (a page asks for it first).
    page.goto("/queue")
    assert "/login" in page.url
    shot(page, "01-sign-in")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORDS["alice"])
    page.click("button[type=submit]")
    page.wait_for_url("**/queue")
    page.wait_for_selector(".card.current")
    shot(page, "02-queue")

    # The hostile camera name is text: nothing ran, the characters are visible.
    assert page.title() != "pwned"
    assert "<script>" in page.locator(f"#item-{cards[0]} .camera").inner_text()

    def key(k: str, expect: str) -> None:
        page.keyboard.press(k)
        wait_for_line(page, expect)

    key("a", f"{cards[0]}: approved")
    key("r", f"{cards[1]}: rejected")
    key("2", f"{cards[2]}: relabelled → {second_class}")
    key("a", f"{cards[3]}: approved")
    key("u", f"undone: {cards[3]} is pending")
    assert "current" in page.get_attribute(f"#item-{cards[3]}", "class")
    page.keyboard.press("j")
    assert "current" in page.get_attribute(f"#item-{cards[4]}", "class")
    page.keyboard.press("k")
    key("r", f"{cards[3]}: rejected")
    shot(page, "03-queue-after-keyboard")

    # Select the last two with x and approve them in bulk.
    page.keyboard.press("x")  # the card after cards[3]
    page.keyboard.press("j")
    page.keyboard.press("x")
    assert page.locator(".card.selected").count() == 2
    page.click("#bulk-approve")
    page.wait_for_selector(".flash")
    assert "Approved 2." in page.inner_text(".flash")
    shot(page, "04-queue-after-bulk")

    with Session(engine) as session:
        history = [(d.item_id, d.reviewer, d.action, d.review_label)
                   for d in session.exec(select(ReviewDecision).order_by(ReviewDecision.id)).all()]
        states = {i.id: (i.status, i.review_label) for i in session.exec(select(ReviewItem)).all()}
    assert history == [
        (cards[0], "alice", "approve", None),
        (cards[1], "alice", "reject", None),
        (cards[2], "alice", "relabel", second_class),
        (cards[3], "alice", "approve", None),
        (cards[3], "alice", "undo", None),
        (cards[3], "alice", "reject", None),
        (cards[4], "alice", "approve", None),
        (cards[5], "alice", "approve", None),
    ]
    assert states == {
        cards[0]: ("approved", None), cards[1]: ("rejected", None), cards[2]: ("relabelled", second_class),
        cards[3]: ("rejected", None), cards[4]: ("approved", None), cards[5]: ("approved", None),
    }

    # Item detail: full image, every probability, the history.
    page.goto(f"/items/{cards[2]}")
    assert page.locator(".probabilities tr").count() == 7
    assert page.locator(".history tbody tr").count() == 1
    assert page.evaluate("document.querySelector('figure.full img').naturalWidth") == 64
    shot(page, "05-item")

    # Classify a photo with the real model.
    page.goto("/classify")
    name, data = photo_bytes()
    page.set_input_files("input[name=image]", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    page.click("form.classify button[type=submit]")
    page.wait_for_selector("table.probabilities")
    assert page.locator("table.probabilities tr").count() == 7
    shot(page, "06-classify")

    page.goto("/cameras")
    assert page.locator("#camera-gate code").inner_text() == "rtsp://***@10.0.0.5/live"
    shot(page, "07-cameras")
    page.goto("/stats")
    shot(page, "08-stats")

    page.click("header .signout button")
    page.wait_for_url("**/login**")
    page.goto("/queue")
    assert "/login" in page.url
    assert page.problems == []
