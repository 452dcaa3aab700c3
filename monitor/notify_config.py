"""The `notify:` and `workers:` sections of the config file.

``notify.targets`` names where alerts go (a webhook or an MQTT broker); each site lists
the targets it alerts in ``sites[].notify``; ``notify.retry`` is the dispatcher's
backoff and when it gives up on an alert (a dead letter). ``workers`` holds the lease timing of `monitor run --worker NAME` processes.

Strict like the rest of the config. :mod:`monitor.config` composes these models, so this
module must not import it at import time (a cycle): it has its own :class:`Strict` base
and parses durations through a late import, as :mod:`rollout.config` does.

Secrets (a webhook's HMAC key, an MQTT password) are best given as the name of an
environment variable (``secret_env``), so they never sit in the YAML file; given inline
(``secret``) they are kept as ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator


def _duration(value: Any) -> float:
    from monitor.config import parse_duration  # late: monitor.config imports this module

    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
_TOPIC_PART = re.compile(r"^[^#+\x00/][^#+\x00]*$")


class Strict(BaseModel):
    """Base of these sections: unknown keys are errors (as in monitor.config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _secret_from(inline: SecretStr | None, env: str | None) -> str | None:
    if inline is not None:
        return inline.get_secret_value()
    if env is not None:
        return os.environ.get(env)
    return None


class WebhookTarget(Strict):
    """An HTTP(S) endpoint that receives each alert as a signed JSON POST."""

    kind: Literal["webhook"] = Field(description="webhook")
    url: str = Field(description="http:// or https:// URL the alerts are POSTed to")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key; prefer secret_env")
    secret_env: str | None = Field(None, description="name of the environment variable holding the HMAC key")
    timeout: Duration = Field(5.0, description="give up one delivery attempt after this long")

    @model_validator(mode="after")
    def _verify(self) -> "WebhookTarget":
        verify_webhook(self)
        return self

    def secret_value(self) -> str:
        """The HMAC key (from the config or the environment).

        Raises:
            ValueError: ``secret_env`` names a variable that is not set.
        """
        value = _secret_from(self.secret, self.secret_env)
        if not value:
            raise ValueError(f"environment variable {self.secret_env} (notify webhook secret_env) is not set")
        return value


class MqttTarget(Strict):
    """An MQTT broker; each alert is published to ``{topic_prefix}/{site}/{camera}``."""

    kind: Literal["mqtt"] = Field(description="mqtt")
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    username: str | None = Field(None, description="user name, when the broker wants one")
    password: SecretStr | None = Field(None, description="password; prefer password_env")
    password_env: str | None = Field(None, description="name of the environment variable holding the password")
    topic_prefix: str = Field("bear-monitor/alerts", description="topics are {topic_prefix}/{site}/{camera}")
    qos: Literal[1, 2] = Field(1, description="1: at least once (receivers dedupe by key); 2: exactly once")
    client_id: str | None = Field(None, description="MQTT client id; default: bear-monitor-<worker or host>")
    timeout: Duration = Field(5.0, description="give up connecting or waiting for the broker's ack after this long")

    @model_validator(mode="after")
    def _verify(self) -> "MqttTarget":
        verify_mqtt(self)
        return self

    def password_value(self) -> str | None:
        """The password (from the config or the environment), or None."""
        return _secret_from(self.password, self.password_env)


NotifyTarget = Annotated[Union[WebhookTarget, MqttTarget], Field(discriminator="kind")]


class RetryConfig(Strict):
    """How the dispatcher retries a delivery that failed (exponential backoff with jitter),
    and when it gives up on one: the alert becomes a dead letter, kept for an operator
    (`monitor notify dead`, `monitor notify retry`), and the camera's later alerts go on."""

    initial: Duration = Field(1.0, description="wait this long before the first retry")
    max: Duration = Field(300.0, description="never wait longer than this between tries")
    multiplier: float = Field(2.0, ge=1.0, le=10.0, description="each failed try multiplies the wait by this")
    poll: Duration = Field(1.0, description="look for new alerts to deliver at least this often")
    max_age: Duration = Field(
        86400.0,
        description="an alert still undelivered this long after it was raised (or requeued) goes dead "
        "at its next failed try ('24h')",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="also go dead after this many failed tries; none: only max_age counts"
    )
    rejected_attempts: int = Field(
        3, ge=1, le=100,
        description="an alert a webhook rejects (4xx except 408, 409, 425, 429) goes dead once it was "
        "tried this many times, instead of being retried until max_age",
    )

    @model_validator(mode="after")
    def _verify(self) -> "RetryConfig":
        verify_backoff(self)
        return self


class NotifyConfig(Strict):
    """Where alerts go (stages limited and later); sites choose targets in `sites[].notify`."""

    targets: dict[str, NotifyTarget] = Field(
        default_factory=dict, description="name -> {kind: webhook, url: ...} or {kind: mqtt, host: ...}"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @model_validator(mode="after")
    def _verify(self) -> "NotifyConfig":
        verify_target_names(self)
        return self


class WorkersConfig(Strict):
    """Camera leases of `monitor run --worker NAME` processes sharing one PostgreSQL."""

    lease_ttl: Duration = Field(
        15.0, description="a camera whose worker stopped renewing is taken over after this long"
    )
    heartbeat: Duration = Field(
        5.0, description="renew leases and look for free cameras this often; below a third of lease_ttl"
    )

    @model_validator(mode="after")
    def _verify(self) -> "WorkersConfig":
        verify_heartbeat(self)
        return self


def verify_webhook(target: WebhookTarget) -> None:
    """A webhook has an http(s) URL and exactly one of secret / secret_env."""
    if not target.url.lower().startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    if (target.secret is None) == (target.secret_env is None):
        raise ValueError("give exactly one of `secret` or `secret_env` (the HMAC key receivers verify)")


def verify_mqtt(target: MqttTarget) -> None:
    """The topic prefix is a valid MQTT topic without wildcards; one password source at most."""
    if not all(_TOPIC_PART.match(part or "x") for part in target.topic_prefix.split("/")) or not target.topic_prefix:
        raise ValueError("topic_prefix must be a topic without '+', '#' or a leading '/', e.g. bear-monitor/alerts")
    if target.password is not None and target.password_env is not None:
        raise ValueError("give at most one of `password` or `password_env`")


def verify_backoff(retry: RetryConfig) -> None:
    """The first wait is not above the cap, and an alert lives long enough to be retried."""
    if retry.initial > retry.max:
        raise ValueError(f"initial ({retry.initial:g}s) must not be above max ({retry.max:g}s)")
    if retry.max_age < retry.initial:
        raise ValueError(f"max_age ({retry.max_age:g}s) must be at least initial ({retry.initial:g}s): "
                         "an alert must live long enough to be retried once")


def verify_target_names(config: NotifyConfig) -> None:
    """Target names are ids (they are stored with every outbox entry)."""
    pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    for name in config.targets:
        if not pattern.match(name):
            raise ValueError(f"target name {name!r}: use letters, digits, '_', '-' or '.' (at most 64 characters)")


def verify_heartbeat(config: WorkersConfig) -> None:
    """Leases are renewed at least three times per TTL, so one slow renewal loses nothing."""
    if config.heartbeat * 3 > config.lease_ttl:
        raise ValueError(
            f"heartbeat ({config.heartbeat:g}s) must be at most a third of lease_ttl ({config.lease_ttl:g}s)"
        )
