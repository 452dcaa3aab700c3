"""The `notify:` and `workers:` config sections: bad input is refused with the field and the fix."""

from __future__ import annotations

import pytest

from monitor.config import ConfigError, parse_config

HOOK = {"kind": "webhook", "url": "https://ops.example/hook", "secret_env": "OPS_SECRET"}


@pytest.mark.parametrize(("data", "message"), [
    ({"sites": [{"id": "a", "notify": ["ops"]}]}, "site 'a' notifies 'ops', which is not under notify.targets"),
    ({"notify": {"targets": {"ops": {**HOOK, "secret": "x"}}}}, "exactly one of `secret` or `secret_env`"),
    ({"notify": {"targets": {"ops": {"kind": "webhook", "url": "https://x"}}}}, "exactly one of `secret`"),
    ({"notify": {"targets": {"ops": {**HOOK, "url": "ftp://x"}}}}, "url must start with http:// or https://"),
    ({"notify": {"targets": {"ops": {**HOOK, "extra": 1}}}}, "unknown key 'extra'"),
    ({"notify": {"targets": {"ops": {"kind": "sms"}}}}, "notify.targets.ops"),
    ({"notify": {"targets": {"bad name": HOOK}}}, "target name 'bad name'"),
    ({"notify": {"targets": {"m": {"kind": "mqtt", "topic_prefix": "alerts/#"}}}}, "topic_prefix must be a topic"),
    ({"notify": {"targets": {"m": {"kind": "mqtt", "qos": 0}}}}, "notify.targets.m.mqtt.qos"),
    ({"notify": {"retry": {"initial": "soon"}}}, "notify.retry.initial"),
    ({"workers": {"lease_ttl": "3s", "heartbeat": "2s"}}, "at most a third of lease_ttl"),
    ({"notify": {"retry": {"max_age": "never"}}}, "notify.retry.max_age"),
    ({"notify": {"retry": {"max_age": "1s", "initial": "5s", "max": "10s"}}}, "max_age (1s) must be at least initial"),
    ({"notify": {"retry": {"initial": "10m", "max": "5m"}}}, "initial (600s) must not be above max (300s)"),
    ({"notify": {"retry": {"max_attempts": 0}}}, "notify.retry.max_attempts"),
    ({"notify": {"retry": {"rejected_attempts": 0}}}, "notify.retry.rejected_attempts"),
])
def test_bad_notify_and_workers_config_is_refused_in_one_line(data, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_good_notify_config_keeps_secrets_out_of_its_text(monkeypatch):
    monkeypatch.setenv("OPS_SECRET", "from-the-environment")
    config = parse_config({
        "notify": {"targets": {"ops": HOOK, "inline": {**HOOK, "secret_env": None, "secret": "inline-secret"},
                               "park": {"kind": "mqtt", "password": "mqtt-pass"}}},
        "sites": [{"id": "a", "notify": ["ops", "park"]}],
    })
    assert config.notify.targets["ops"].secret_value() == "from-the-environment"
    assert config.notify.targets["inline"].secret_value() == "inline-secret"
    assert config.notify.targets["park"].password_value() == "mqtt-pass"
    shown = repr(config) + config.model_dump_json()
    assert "inline-secret" not in shown and "mqtt-pass" not in shown
    monkeypatch.delenv("OPS_SECRET")
    with pytest.raises(ValueError, match="OPS_SECRET"):
        config.notify.targets["ops"].secret_value()
