"""Settings: read from the environment once; a malformed value stops the process at start."""

from __future__ import annotations

import base64
import logging
import multiprocessing
import os
import subprocess
import sys

import pytest

import config
from config import ConfigError, get_settings, normalize_database_url

# The defaults the contract names: each variable, its setting, and its value when unset.
CONTRACT_DEFAULTS = [
    ("WEBHOOKS_RETRY_DELAYS", "retry_delays", (2, 4, 8, 16, 32)),
    ("WEBHOOKS_HTTP_TIMEOUT_SECONDS", "http_timeout", 10),
    ("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", "circuit_failure_threshold", 5),
    ("WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS", "circuit_cooldown", 60),
    ("WEBHOOKS_WATCHDOG_INTERVAL_SECONDS", "watchdog_interval", 30),
    ("WEBHOOKS_MAX_PAYLOAD_BYTES", "max_payload_bytes", 262_144),
    ("WEBHOOKS_WORKER_METRICS_PORT", "worker_metrics_port", 9808),
    ("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "allow_private_targets", False),
]


@pytest.mark.parametrize(("name", "setting", "default"), CONTRACT_DEFAULTS)
def test_defaults_of_the_contract(setenv, name, setting, default):
    setenv(**{name: None})
    value = getattr(get_settings(), setting)
    assert value == default
    assert isinstance(value, bool) is isinstance(default, bool)  # False, not 0


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
        # 43 x "a" decodes to 32 bytes leniently, but is not the encoding of any key.
        ("WEBHOOKS_SECRET_KEY", "a" * 43),
        ("WEBHOOKS_SECRET_KEY", "a" * 43 + "="),
        ("WEBHOOKS_SECRET_KEY", base64.urlsafe_b64encode(b"k" * 32).decode() + "=="),
        ("WEBHOOKS_SECRET_KEY", base64.urlsafe_b64encode(b"k" * 31).decode()),
        ("WEBHOOKS_SECRET_KEY", " " + "A" * 20 + " " + "A" * 23),
        ("WEBHOOKS_PREVIOUS_SECRET_KEYS", "a" * 43),
        ("WEBHOOKS_ENV", "staging"),
        ("DATABASE_URL", ""),
        ("REDIS_URL", ""),
        ("WEBHOOKS_DB_POOL_SIZE", "0"),
        ("WEBHOOKS_DB_POOL_SIZE", "five"),
        ("WEBHOOKS_LOG_LEVEL", "loud"),
        ("WEBHOOKS_MAX_RESPONSE_BODY_BYTES", "-1"),
        ("WEBHOOKS_TENANT_MAX_IN_FLIGHT", "150%"),
        ("WEBHOOKS_LEASE_MARGIN_SECONDS", "nan"),
    ],
)
def test_malformed_setting_raises_config_error_naming_it(setenv, name, value):
    setenv(**{name: value})
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert name in str(info.value)


def test_the_message_says_what_is_wrong_and_shows_the_value(setenv):
    setenv(WEBHOOKS_HTTP_TIMEOUT_SECONDS="ten", WEBHOOKS_DB_POOL_SIZE="0")
    with pytest.raises(ConfigError) as info:
        get_settings()
    # Every bad value at once, each with its variable, the rule and what was given.
    assert "WEBHOOKS_HTTP_TIMEOUT_SECONDS must be a number, got 'ten'" in str(info.value)
    assert "WEBHOOKS_DB_POOL_SIZE must be at least 1, got '0'" in str(info.value)


def test_a_blank_variable_means_the_default(setenv):
    setenv(WEBHOOKS_HTTP_TIMEOUT_SECONDS="", WEBHOOKS_RETRY_DELAYS="", WEBHOOKS_LOG_LEVEL="")
    settings = get_settings()
    assert settings.http_timeout == 10
    assert settings.retry_delays == (2, 4, 8, 16, 32)
    assert settings.log_level == logging.INFO


def test_the_pool_size_and_log_level_are_settings(setenv):
    setenv(WEBHOOKS_DB_POOL_SIZE="7", WEBHOOKS_LOG_LEVEL="warning")
    from webhooks.db import _create

    assert _create().pool.size() == 7  # type: ignore[attr-defined]
    assert get_settings().log_level == logging.WARNING


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


@pytest.mark.parametrize("padding", ["=", ""])
def test_a_canonical_key_is_accepted_with_or_without_its_padding(setenv, padding):
    key = os.urandom(32)
    setenv(WEBHOOKS_SECRET_KEY=base64.urlsafe_b64encode(key).decode().rstrip("=") + padding)
    assert get_settings().secret_key == key


def test_previous_keys_are_read_in_order(setenv):
    keys = [os.urandom(32) for _ in range(2)]
    setenv(
        WEBHOOKS_PREVIOUS_SECRET_KEYS=",".join(base64.urlsafe_b64encode(k).decode() for k in keys)
    )
    assert get_settings().previous_secret_keys == tuple(keys)


@pytest.mark.parametrize("environment", [None, "production"])
def test_outside_development_a_missing_secret_key_stops_the_process(
    setenv, monkeypatch, tmp_path, environment
):
    monkeypatch.setattr(config, "VAR_DIR", tmp_path)
    setenv(WEBHOOKS_ENV=environment, WEBHOOKS_SECRET_KEY=None)
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert "WEBHOOKS_SECRET_KEY is not set" in str(info.value)
    assert "WEBHOOKS_ENV=development" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no key made up on this host


def test_the_app_refuses_to_start_without_a_secret_key_in_production(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOKS_SECRET_KEY", "WEBHOOKS_ENV")}
    env["WEBHOOKS_VAR_DIR"] = str(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", "from webhooks import create_app; create_app()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "WEBHOOKS_SECRET_KEY is not set" in run.stderr
    assert not (tmp_path / "secret_key").exists()


def test_development_key_file_is_made_once_with_mode_0600(setenv, monkeypatch, tmp_path):
    monkeypatch.setattr(config, "VAR_DIR", tmp_path / "var")
    setenv(WEBHOOKS_ENV="development", WEBHOOKS_SECRET_KEY=None)
    key = get_settings().secret_key
    path = tmp_path / "var" / "secret_key"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert base64.urlsafe_b64decode(path.read_text()) == key
    setenv()
    assert get_settings().secret_key == key
    assert os.listdir(tmp_path / "var") == ["secret_key"]


def _read_dev_key(start, results) -> None:
    start.wait(10)
    results.put(config._dev_key_text())


def test_processes_starting_together_agree_on_one_development_key(monkeypatch, tmp_path):
    # Forked after VAR_DIR is patched: each child creates or reads the same file.
    monkeypatch.setattr(config, "VAR_DIR", tmp_path)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=_read_dev_key, args=(start, results)) for _ in range(12)]
    for child in children:
        child.start()
    start.set()
    keys = {results.get(timeout=20) for _ in children}
    for child in children:
        child.join(10)
    assert len(keys) == 1
    assert os.listdir(tmp_path) == ["secret_key"]  # no temporary file left behind
    assert os.stat(tmp_path / "secret_key").st_mode & 0o777 == 0o600
