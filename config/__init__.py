"""Settings from the environment, read in one place (environs); a bad value stops the process
at start with a message that names the variable."""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from environs import Env, EnvValidationError
from marshmallow import ValidationError, fields, validate

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


class _Env(Env):
    """environs' reader, with a blank variable read as unset (`FOO=` in a compose file or a
    Procfile's environment means "the default" there, as it always has here)."""

    def _get_value(self, env_key: str, default: Any) -> Any:
        value = super()._get_value(env_key, default)
        return default if value == "" else value


# Our own words for the parse errors (marshmallow's "Not a valid integer." names neither the
# variable nor the value); `Reader.check` adds both.
class _Number(fields.Float):
    default_error_messages = {"invalid": "must be a number", "special": "must be a finite number"}


class _Integer(fields.Integer):
    default_error_messages = {"invalid": "must be an integer"}


class _Flag(fields.Boolean):
    default_error_messages = {"invalid": "must be true or false"}


def _at_least(minimum: float) -> validate.Range:
    return validate.Range(min=minimum, error="must be at least {min}")


def _between(minimum: float, maximum: float) -> validate.Range:
    return validate.Range(min=minimum, max=maximum, error="must be from {min} to {max}")


# A retry is due within this (a stored due time must stay a date; `nan` or `inf` must not pass).
MAX_RETRY_DELAY = 7 * 86_400.0
# A century: "keep everything" in practice, and still a date PostgreSQL can compute.
MAX_RETENTION_DAYS = 36_500


class Reader:
    """Read settings with environs, collecting every bad value; `check` reports them all in one
    ConfigError that names each variable and its value."""

    def __init__(self) -> None:
        self.env = _Env(eager=False)
        self.env.add_parser_from_field("number", _Number)
        self.env.add_parser_from_field("integer", _Integer)
        self.env.add_parser_from_field("flag", _Flag)
        self.env.add_parser("delays", _delays)
        self.env.add_parser("tenant_cap", _tenant_cap)
        self.env.add_parser("level", _log_level)

    def seconds(self, name: str, default: float, minimum: float = 0.0) -> float:
        return cast(float, self.env.number(name, default, validate=_at_least(minimum)))

    def whole(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        check = _at_least(minimum) if maximum is None else _between(minimum, maximum)
        return cast(int, self.env.integer(name, default, validate=check))

    def flag(self, name: str, default: bool) -> bool:
        return cast(bool, self.env.flag(name, default))

    def text(self, name: str, default: str | None, **options: Any) -> Any:
        return self.env.str(name, default, **options)

    def check(self) -> None:
        try:
            self.env.seal()
        except EnvValidationError as exc:
            problems = [
                f"{name} {'; '.join(_flat(messages))}, got {os.environ.get(name)!r}"
                for name, messages in cast(dict[str, Any], exc.error_messages).items()
            ]
            raise ConfigError("; ".join(problems)) from None


def _flat(messages: Any) -> list[str]:
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flat(value)]
    if isinstance(messages, list):
        return [m for value in messages for m in _flat(value)]
    return [str(messages)]


def _delays(raw: str | tuple[float, ...]) -> tuple[float, ...]:
    if isinstance(raw, tuple):
        return raw
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValidationError("must be comma-separated seconds") from None
    if any(v < 0 for v in values):
        raise ValidationError("may not hold negative delays")
    if not all(math.isfinite(v) and v <= MAX_RETRY_DELAY for v in values):
        raise ValidationError(f"may not hold delays over {MAX_RETRY_DELAY:g} s (a week)")
    return values


def _log_level(raw: str | int) -> int:
    level = raw if isinstance(raw, int) else logging.getLevelNamesMapping().get(raw.upper())
    if level is None:
        raise ValidationError("must be a level name: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def parse_tenant_cap(raw: str) -> tuple[int, float]:
    """Read a tenant cap: `N` attempts, or `P%` of the live pool slots; (N, 0) or (0, share)."""
    raw = raw.strip()
    if raw.endswith("%"):
        share = float(raw[:-1]) / 100
        if not 0 < share <= 1:
            raise ValueError(raw)
        return 0, share
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value, 0.0


def _tenant_cap(raw: str) -> str:
    try:
        parse_tenant_cap(raw)
    except ValueError:
        raise ValidationError("must be a whole number of attempts or a share like 50%") from None
    return raw


# Read at import: processes (gunicorn's config, the Celery app) place files here before any
# setting is read.
VAR_DIR = _Env().path("WEBHOOKS_VAR_DIR", ROOT / "var")


def normalize_database_url(url: str) -> str:
    """Make a libpq-style URL use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


ENVIRONMENTS = ("development", "production")
# 32 bytes in URL-safe base64: 43 characters and an optional "=" of padding.
_KEY = re.compile(r"[A-Za-z0-9_-]{43}=?")
KEY_HELP = (
    'generate one with: python -c "import base64, os; '
    'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
)


def decode_key(name: str, raw: str) -> bytes:
    """Decode a 32-byte key strictly: its one canonical URL-safe base64 spelling, nothing else."""
    raw = raw.strip()
    key = base64.urlsafe_b64decode(raw.rstrip("=") + "=") if _KEY.fullmatch(raw) else b""
    # The last character carries 2 unused bits: a spelling with them set (43 x "a") is not the
    # encoding of any key, and lenient decoders accept it as one.
    if len(key) != 32 or base64.urlsafe_b64encode(key).decode().rstrip("=") != raw.rstrip("="):
        raise ConfigError(f"{name} must be 32 bytes in URL-safe base64; {KEY_HELP}")
    return key


def _dev_key_text() -> str:
    """Return the development key kept in ./var, creating it once, exclusively, mode 0600."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a file of our own (O_EXCL, 0600 from the start), then linked into
        # place: link fails if the name exists, so of processes starting together exactly one
        # key wins and no process ever reads a half-written file.
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _secret_key(environment: str, raw: str | None) -> bytes:
    if not raw:
        if environment != "development":
            # Refusing beats a key made up per host: hosts could not read each other's
            # secrets, and an ephemeral disk would lose every secret on restart.
            raise ConfigError(
                "WEBHOOKS_SECRET_KEY is not set. It encrypts the signing secrets and custom "
                "headers at rest and must be the same on every process and host; "
                f"{KEY_HELP}. (Only with WEBHOOKS_ENV=development is a key generated into "
                f"{VAR_DIR / 'secret_key'}.)"
            )
        raw = _dev_key_text()
    return decode_key("WEBHOOKS_SECRET_KEY", raw)


def _previous_keys(raw: str) -> tuple[bytes, ...]:
    return tuple(
        decode_key("WEBHOOKS_PREVIOUS_SECRET_KEYS", part) for part in raw.split(",") if part.strip()
    )


@dataclass(frozen=True)
class Settings:
    """The service's settings; each default is written once, in `get_settings`."""

    database_url: str
    redis_url: str
    secret_key: bytes = field(repr=False)
    # Keys that still decrypt, never encrypt: set them while rotate-secret-key re-encrypts.
    previous_secret_keys: tuple[bytes, ...] = field(repr=False)
    # "development" allows a generated secret key and Flower without credentials.
    environment: str
    log_level: int
    # Connections each process keeps open to PostgreSQL (plus up to 10 more under load).
    db_pool_size: int
    retry_delays: tuple[float, ...]
    retry_jitter: float
    http_timeout: float
    # Subscription create and update resolve the URL's host within this budget (422 past it).
    dns_timeout: float
    circuit_failure_threshold: int
    circuit_cooldown: float
    watchdog_interval: float
    lost_after: float
    allow_private_targets: bool
    # Events and subscriptions must name a known, unarchived type of the catalogue.
    strict_event_types: bool
    max_payload_bytes: int
    worker_metrics_port: int
    # Loopback unless set: the metrics have no authentication (a scraper elsewhere needs it set).
    worker_metrics_address: str
    # The backlog gauges are read from the database at most this often per process.
    metrics_cache_seconds: float
    rotation_grace: float
    retention_days: int
    # Per tenant; a batch counts its events, a replay the deliveries it requeues (ratelimit.py).
    rate_limit: str
    # Per client address, for requests without a valid API key (each may cost a key lookup).
    rate_limit_unauthenticated: str
    api_key_cache_seconds: float
    # Proxies in front of the API that each add X-Forwarded-For and -Proto: the client's
    # address (rate limits, sign-in limits) and scheme are read from those headers. 0: none.
    proxy_hops: int
    # The part of a subscriber's answer kept with an attempt.
    max_response_body: int
    retry_after_max: float
    # Added to the HTTP timeout to make a claim's lease: time to record the outcome after it.
    lease_margin: float
    # Concurrent attempts one tenant may hold: `N`, or `P%` of the live workers' pool slots.
    tenant_max_in_flight: str

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery may stay in flight before the watchdog takes it back."""
        return self.http_timeout + self.lease_margin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process."""
    read = Reader()
    environment = read.text(
        "WEBHOOKS_ENV",
        "production",
        validate=validate.OneOf(ENVIRONMENTS, error="must be one of {choices}"),
    )
    watchdog_interval = read.seconds("WEBHOOKS_WATCHDOG_INTERVAL_SECONDS", 30.0, minimum=0.1)
    values: dict[str, Any] = {
        "database_url": read.text("DATABASE_URL", None),
        "redis_url": read.text("REDIS_URL", None),
        "log_level": read.env.level("WEBHOOKS_LOG_LEVEL", "INFO"),
        "db_pool_size": read.whole("WEBHOOKS_DB_POOL_SIZE", 5, minimum=1),
        "retry_delays": read.env.delays("WEBHOOKS_RETRY_DELAYS", "2,4,8,16,32"),
        "retry_jitter": read.seconds("WEBHOOKS_RETRY_JITTER", 0.1),
        "http_timeout": read.seconds("WEBHOOKS_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        "dns_timeout": read.seconds("WEBHOOKS_DNS_TIMEOUT_SECONDS", 2.0, minimum=0.1),
        "circuit_failure_threshold": read.whole("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", 5, 1),
        "circuit_cooldown": read.seconds("WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS", 60.0, minimum=0.1),
        "watchdog_interval": watchdog_interval,
        "lost_after": read.seconds(
            "WEBHOOKS_LOST_AFTER_SECONDS", max(60.0, 2 * (watchdog_interval or 0)), minimum=0.1
        ),
        "allow_private_targets": read.flag("WEBHOOKS_ALLOW_PRIVATE_TARGETS", False),
        "strict_event_types": read.flag("WEBHOOKS_STRICT_EVENT_TYPES", False),
        "max_payload_bytes": read.whole("WEBHOOKS_MAX_PAYLOAD_BYTES", 262_144, minimum=1),
        "worker_metrics_port": read.whole(
            "WEBHOOKS_WORKER_METRICS_PORT", 9808, minimum=0, maximum=65535
        ),
        "worker_metrics_address": read.text("WEBHOOKS_WORKER_METRICS_ADDRESS", "127.0.0.1"),
        "metrics_cache_seconds": read.seconds("WEBHOOKS_METRICS_CACHE_SECONDS", 5.0),
        "rotation_grace": read.seconds("WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS", 86_400.0),
        "retention_days": read.whole(
            "WEBHOOKS_RETENTION_DAYS", 30, minimum=1, maximum=MAX_RETENTION_DAYS
        ),
        "rate_limit": read.text("WEBHOOKS_RATE_LIMIT", "6000/minute"),
        "rate_limit_unauthenticated": read.text("WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED", "60/minute"),
        "api_key_cache_seconds": read.seconds("WEBHOOKS_API_KEY_CACHE_SECONDS", 30.0),
        "proxy_hops": read.whole("WEBHOOKS_PROXY_HOPS", 0, minimum=0),
        "max_response_body": read.whole("WEBHOOKS_MAX_RESPONSE_BODY_BYTES", 4096),
        "retry_after_max": read.seconds("WEBHOOKS_RETRY_AFTER_MAX_SECONDS", 3600.0),
        "lease_margin": read.seconds("WEBHOOKS_LEASE_MARGIN_SECONDS", 20.0, minimum=1.0),
        "tenant_max_in_flight": read.env.tenant_cap("WEBHOOKS_TENANT_MAX_IN_FLIGHT", "75%"),
    }
    secret_key = read.text("WEBHOOKS_SECRET_KEY", None)
    previous_keys = read.text("WEBHOOKS_PREVIOUS_SECRET_KEYS", "")
    read.check()
    if not values["database_url"]:
        raise ConfigError("DATABASE_URL is not set (make run starts an embedded PostgreSQL)")
    if not values["redis_url"]:
        raise ConfigError("REDIS_URL is not set (make run starts an embedded Redis)")
    values["database_url"] = normalize_database_url(values["database_url"])
    return Settings(
        secret_key=_secret_key(environment, secret_key),
        previous_secret_keys=_previous_keys(previous_keys),
        environment=environment,
        **values,
    )
