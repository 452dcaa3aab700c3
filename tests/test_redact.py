"""Camera credentials are masked in URLs, free text and log records."""

from __future__ import annotations

import logging

import pytest

from monitor.redact import RedactingFilter, redact_text, redact_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin@cam.local/live", "rtsp://***@cam.local/live"),
        ("http://cam.local/mjpeg?user=admin&password=hunter2&fps=5",
         "http://cam.local/mjpeg?user=***&password=***&fps=5"),
        ("https://cdn.example/live.m3u8?token=abc123", "https://cdn.example/live.m3u8?token=***"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("/data/clips/trail.mp4", "/data/clips/trail.mp4"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_inside_error_messages():
    message = "Connection refused: 'rtsp://admin:hunter2@10.0.0.5/live?token=s3cr3t' (errno 111)"
    clean = redact_text(message)
    assert "hunter2" not in clean and "s3cr3t" not in clean and "admin" not in clean
    assert "10.0.0.5/live" in clean


def test_logging_filter_scrubs_formatted_arguments(caplog):
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("opening %s", "rtsp://admin:hunter2@cam/live")
    assert "hunter2" not in caplog.text
    assert "rtsp://***@cam/live" in caplog.text


def test_redact_text_keeps_what_follows_a_secret_and_is_idempotent():
    message = "open failed for http://cam/live?token=s3cr3t: connection refused"
    once = redact_text(message)
    assert once == "open failed for http://cam/live?token=***: connection refused"
    assert redact_text(once) == once
