"""Settings: read from the environment once; a malformed value stops the process at start."""

from __future__ import annotations

import base64

import pytest

from config import ConfigError, get_settings, normalize_database_url


def test_defaults_of_the_contract(setenv):
    setenv(
        WEBHOOKS_RETRY_DELAYS=None,
        WEBHOOKS_HTTP_TIMEOUT_SECONDS=None,
        WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD=None,
        WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS=None,
        WEBHOOKS_WATCHDOG_INTERVAL_SECONDS=None,
        WEBHOOKS_MAX_PAYLOAD_BYTES=None,
        WEBHOOKS_WORKER_METRICS_PORT=None,
        WEBHOOKS_ALLOW_PRIVATE_TARGETS=None,
    )
    settings = get_settings()
    assert settings.retry_delays == (2, 4, 8, 16, 32)
    assert settings.http_timeout == 10
    assert settings.circuit_failure_threshold == 5
    assert settings.circuit_cooldown == 60
    assert settings.watchdog_interval == 30
    assert settings.max_payload_bytes == 262_144
    assert settings.worker_metrics_port == 9808
    assert settings.allow_private_targets is False


def test_values_are_read_from_the_environment(setenv):
    setenv(
        WEBHOOKS_RETRY_DELAYS="0.5, 1,2",
        WEBHOOKS_ALLOW_PRIVATE_TARGETS="yes",
        WEBHOOKS_MAX_PAYLOAD_BYTES="1024",
        DATABASE_URL="postgres://u@h:5/db",
    )
    settings = get_settings()
    assert settings.retry_delays == (0.5, 1, 2)
    assert settings.allow_private_targets is True
    assert settings.max_payload_bytes == 1024
    assert settings.database_url == "postgresql+psycopg://u@h:5/db"


def test_settings_are_read_once_per_process(setenv, monkeypatch):
    setenv(WEBHOOKS_MAX_PAYLOAD_BYTES="1000")
    assert get_settings().max_payload_bytes == 1000
    monkeypatch.setenv("WEBHOOKS_MAX_PAYLOAD_BYTES", "2000")
    assert get_settings().max_payload_bytes == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOKS_RETRY_DELAYS", "1,two,3"),
        ("WEBHOOKS_RETRY_DELAYS", "1,-2"),
        ("WEBHOOKS_RETRY_JITTER", "-0.1"),
        ("WEBHOOKS_HTTP_TIMEOUT_SECONDS", "0"),
        ("WEBHOOKS_HTTP_TIMEOUT_SECONDS", "ten"),
        ("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "0"),
        ("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "2.5"),
        ("WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS", "-1"),
        ("WEBHOOKS_WATCHDOG_INTERVAL_SECONDS", "0"),
        ("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "maybe"),
        ("WEBHOOKS_MAX_PAYLOAD_BYTES", "0"),
        ("WEBHOOKS_MAX_PAYLOAD_BYTES", "256k"),
        ("WEBHOOKS_WORKER_METRICS_PORT", "-1"),
        ("WEBHOOKS_RETENTION_DAYS", "0"),
        ("WEBHOOKS_SECRET_KEY", base64.urlsafe_b64encode(b"short").decode()),
        ("WEBHOOKS_SECRET_KEY", "not base64 at all!"),
        ("DATABASE_URL", ""),
        ("REDIS_URL", ""),
    ],
)
def test_malformed_setting_raises_config_error_naming_it(setenv, name, value):
    setenv(**{name: value})
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_database_url_uses_psycopg_3(url, expected):
    assert normalize_database_url(url) == expected
