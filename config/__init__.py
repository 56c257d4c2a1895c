"""Settings from the environment, read in one place; a bad value stops the process at start."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("WEBHOOKS_VAR_DIR", ROOT / "var"))


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _delays(name: str, default: str) -> tuple[float, ...]:
    raw = os.environ.get(name) or default
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated seconds, got {raw!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{name} may not hold negative delays, got {raw!r}")
    return values


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


def _environment() -> str:
    raw = os.environ.get("WEBHOOKS_ENV") or "production"
    if raw not in ENVIRONMENTS:
        raise ConfigError(f"WEBHOOKS_ENV must be one of {', '.join(ENVIRONMENTS)}, got {raw!r}")
    return raw


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


def _secret_key(environment: str) -> bytes:
    raw = os.environ.get("WEBHOOKS_SECRET_KEY")
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


def _previous_keys() -> tuple[bytes, ...]:
    raw = os.environ.get("WEBHOOKS_PREVIOUS_SECRET_KEYS") or ""
    return tuple(
        decode_key("WEBHOOKS_PREVIOUS_SECRET_KEYS", part) for part in raw.split(",") if part.strip()
    )


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    secret_key: bytes = field(repr=False)
    # Keys that still decrypt, never encrypt: set them while rotate-secret-key re-encrypts.
    previous_secret_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # "development" allows a generated secret key and Flower without credentials.
    environment: str = "production"
    retry_delays: tuple[float, ...] = (2, 4, 8, 16, 32)
    retry_jitter: float = 0.1
    http_timeout: float = 10.0
    # Subscription create and update resolve the URL's host within this budget (422 past it).
    dns_timeout: float = 2.0
    circuit_failure_threshold: int = 5
    circuit_cooldown: float = 60.0
    watchdog_interval: float = 30.0
    lost_after: float = 60.0
    allow_private_targets: bool = False
    # Events and subscriptions must name a known, unarchived type of the catalogue.
    strict_event_types: bool = False
    max_payload_bytes: int = 262_144
    worker_metrics_port: int = 9808
    # Loopback unless set: the metrics have no authentication (a scraper elsewhere needs it set).
    worker_metrics_address: str = "127.0.0.1"
    # The backlog gauges are read from the database at most this often per process.
    metrics_cache_seconds: float = 5.0
    rotation_grace: float = 86_400.0
    retention_days: int = 30
    # Per tenant; a batch counts its events, a replay the deliveries it requeues (ratelimit.py).
    rate_limit: str = "6000/minute"
    # Per client address, for requests without a valid API key (each may cost a key lookup).
    rate_limit_unauthenticated: str = "60/minute"
    api_key_cache_seconds: float = 30.0
    max_response_body: int = 4096
    retry_after_max: float = 3600.0
    # Added to the HTTP timeout to make a claim's lease: time to record the outcome after it.
    lease_margin: float = 20.0
    # Concurrent attempts one tenant may hold: `N`, or `P%` of the live workers' pool slots.
    tenant_max_in_flight: str = "75%"

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery may stay in flight before the watchdog takes it back."""
        return self.http_timeout + self.lease_margin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not database_url:
        raise ConfigError("DATABASE_URL is not set (make run starts an embedded PostgreSQL)")
    if not redis_url:
        raise ConfigError("REDIS_URL is not set (make run starts an embedded Redis)")
    watchdog_interval = _float("WEBHOOKS_WATCHDOG_INTERVAL_SECONDS", 30.0, minimum=0.1)
    environment = _environment()
    return Settings(
        database_url=normalize_database_url(database_url),
        redis_url=redis_url,
        secret_key=_secret_key(environment),
        previous_secret_keys=_previous_keys(),
        environment=environment,
        retry_delays=_delays("WEBHOOKS_RETRY_DELAYS", "2,4,8,16,32"),
        retry_jitter=_float("WEBHOOKS_RETRY_JITTER", 0.1),
        http_timeout=_float("WEBHOOKS_HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        dns_timeout=_float("WEBHOOKS_DNS_TIMEOUT_SECONDS", 2.0, minimum=0.1),
        circuit_failure_threshold=_int("WEBHOOKS_CIRCUIT_FAILURE_THRESHOLD", 5, minimum=1),
        circuit_cooldown=_float("WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS", 60.0, minimum=0.1),
        watchdog_interval=watchdog_interval,
        lost_after=_float("WEBHOOKS_LOST_AFTER_SECONDS", max(60.0, 2 * watchdog_interval), 0.1),
        allow_private_targets=_bool("WEBHOOKS_ALLOW_PRIVATE_TARGETS", False),
        strict_event_types=_bool("WEBHOOKS_STRICT_EVENT_TYPES", False),
        max_payload_bytes=_int("WEBHOOKS_MAX_PAYLOAD_BYTES", 262_144, minimum=1),
        worker_metrics_port=_int("WEBHOOKS_WORKER_METRICS_PORT", 9808),
        worker_metrics_address=os.environ.get("WEBHOOKS_WORKER_METRICS_ADDRESS") or "127.0.0.1",
        metrics_cache_seconds=_float("WEBHOOKS_METRICS_CACHE_SECONDS", 5.0),
        rotation_grace=_float("WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS", 86_400.0),
        retention_days=_int("WEBHOOKS_RETENTION_DAYS", 30, minimum=1),
        rate_limit=os.environ.get("WEBHOOKS_RATE_LIMIT", "6000/minute"),
        rate_limit_unauthenticated=os.environ.get(
            "WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED", "60/minute"
        ),
        api_key_cache_seconds=_float("WEBHOOKS_API_KEY_CACHE_SECONDS", 30.0),
        retry_after_max=_float("WEBHOOKS_RETRY_AFTER_MAX_SECONDS", 3600.0),
        lease_margin=_float("WEBHOOKS_LEASE_MARGIN_SECONDS", 20.0, minimum=1.0),
        tenant_max_in_flight=_tenant_cap("WEBHOOKS_TENANT_MAX_IN_FLIGHT", "75%"),
    )


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


def _tenant_cap(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    try:
        parse_tenant_cap(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a whole number of attempts or a share like 50%, got {raw!r}"
        ) from None
    return raw
