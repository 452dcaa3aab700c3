"""The `rollout:` config section: defaults from the issue, strictness, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field, ValidationError

from monitor.config import MonitorConfig
from rollout.config import RolloutConfig
from rollout.promote import RolloutContext
from rollout.stages import Stage


def test_defaults_are_the_issues():
    config = RolloutConfig()
    routing = config.routing
    assert routing.manual.negative_sample_rate == 0.05
    assert routing.expansion.positive_sample_rate == 0.25 and routing.expansion.negative_sample_rate == 0.05
    assert routing.expansion.review_out_of_domain and routing.expansion.review_low_confidence
    assert routing.full.audit_sample_rate == 0.05 and routing.full.review_out_of_domain
    gates = config.gates
    assert gates.precision_target == 0.9 and (gates.rate_ratio_min, gates.rate_ratio_max) == (0.5, 2.0)
    assert gates.confidence == 0.95
    assert not config.auto_rollback.enabled and config.auto_rollback.consecutive_failures == 3
    assert config.refresh_interval <= 5


def test_durations_and_per_stage_days():
    config = RolloutConfig.model_validate(
        {"evaluation_interval": "30m", "refresh_interval": "500ms",
         "gates": {"evidence_window": "3d", "min_days_by_stage": {"limited": 30}}}
    )
    assert config.evaluation_interval == 1800 and config.refresh_interval == 0.5
    assert config.gates.evidence_window == 3 * 86400
    assert config.gates.min_days_for(Stage.LIMITED) == 30 and config.gates.min_days_for(Stage.EXPANSION) == 7


@pytest.mark.parametrize(
    "data,message",
    [
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"refresh_interval": "10s"}, "use 5s or less"),
        ({"gates": {"rate_ratio_min": 1.2}}, "must be below 1"),
        ({"timezone": "Mars/Olympus"}, "IANA name"),
        ({"routing": {"expansion": {"positive_sample_rate": 1.5}}}, "less than or equal to 1"),
        ({"routing": {"full": {"negative_sample_rate": 0.1}}}, "Extra inputs are not permitted"),
        ({"gates": {"min_days_by_stage": {"beta": 3}}}, "manual"),
        ({"auto_rollback": {"consecutive_failures": 0}}, "greater than or equal to 1"),
        ({"evaluation_interval": "soon"}, "not a duration"),
    ],
)
def test_bad_settings_are_refused(data, message):
    with pytest.raises(ValidationError) as raised:
        RolloutConfig.model_validate(data)
    assert message in str(raised.value)


def test_the_lead_can_compose_it_into_the_monitor_config():
    """What monitor.config will do: a `rollout` field; the context then reads it."""

    class ComposedConfig(MonitorConfig):
        rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    config = ComposedConfig.model_validate(
        {"sites": [{"id": "north"}], "rollout": {"auto_rollback": {"enabled": True}}}
    )
    ctx = RolloutContext.from_config(config)
    assert ctx.config.auto_rollback.enabled and ctx.sites == frozenset({"north"})
    # Without the field (today's MonitorConfig) the defaults apply.
    assert not RolloutContext.from_config(MonitorConfig()).config.auto_rollback.enabled


def test_importing_rollout_config_first_does_not_import_monitor_config():
    """monitor.config will import rollout.config, so the reverse must not happen at import time."""
    code = "import sys, rollout.config; print('monitor.config' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
