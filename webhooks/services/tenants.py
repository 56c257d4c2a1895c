"""Tenants and their API keys: random, shown once, stored only as a SHA-256.

Each API process keeps the keys it recently found valid in memory (`key_cache`), so most
requests authenticate without PostgreSQL. A cached key is trusted only while the auth version
in Redis (AUTH_VERSION_KEY) is the one seen when it was cached: revoking a key or changing a
tenant's rate limit writes a new version after the commit, and the rate limiter reads it in the
same round trip as its count, so every process drops its cache on its next request. A cache
entry also expires after WEBHOOKS_API_KEY_CACHE_SECONDS, the bound when Redis was unreachable
at the moment of a revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from webhooks.db import affected, uuid7
from webhooks.models import ApiKey, Tenant
from webhooks.services import Invalid, NotFound

log = logging.getLogger(__name__)

KEY_PREFIX = "whk_"
MAX_KEY_LENGTH = 200
AUTH_VERSION_KEY = "wh:auth:version"
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Credential:
    """What a valid API key grants: its tenant, and the tenant's own rate limit if any."""

    tenant_id: uuid.UUID
    rate_limit_per_minute: int | None


class KeyCache:
    """Keys found valid in this process, by SHA-256, each with the auth version it was read
    under and the moment it expires."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._entries: dict[bytes, tuple[Credential, str, float]] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> tuple[Credential, str] | None:
        """Return a live entry and its version; the caller checks the version against Redis."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[2] < time.monotonic():
            self._entries.pop(digest, None)
            return None
        return entry[0], entry[1]

    def put(self, digest: bytes, credential: Credential, version: str, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._size and digest not in self._entries:
                self._entries.pop(next(iter(self._entries)), None)  # the oldest entry
            self._entries[digest] = (credential, version, time.monotonic() + ttl)

    def drop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()


key_cache = KeyCache()


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


MAX_NAME = 200


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant with one API key; return both (the key is not stored)."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise Invalid(f"a tenant's name is 1 to {MAX_NAME} printable characters")
    tenant = Tenant(id=uuid7(), name=name)
    session.add(tenant)
    session.flush()
    key = issue_key(session, tenant.id)
    return tenant, key


def issue_key(session: Session, tenant_id: uuid.UUID) -> str:
    """Make a new API key for a tenant and return it; only its hash is kept."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFound("no such tenant", {"id": str(tenant_id)})
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=uuid7(), tenant_id=tenant_id, prefix=key[:12], key_hash=hash_key(key)))
    session.flush()
    return key


def well_formed(key: str) -> bool:
    """Tell whether a string could be an API key at all (no lookup needed to refuse it)."""
    return key.startswith(KEY_PREFIX) and len(key) <= MAX_KEY_LENGTH


def authenticate(session: Session, key: str) -> uuid.UUID | None:
    """Return the tenant of a valid, unrevoked key, or None."""
    if not well_formed(key):
        return None
    credential = lookup(session, hash_key(key))
    return credential.tenant_id if credential else None


def lookup(session: Session, digest: bytes) -> Credential | None:
    """Return what the key with this SHA-256 grants, or None if it is unknown or revoked."""
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.key_hash, Tenant.rate_limit_per_minute)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    # The lookup is by hash; compare again in constant time so no path depends on the bytes.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Credential(row.tenant_id, row.rate_limit_per_minute)


def rate_limit_of(session: Session, tenant_id: uuid.UUID) -> int | None:
    """A tenant's own rate limit per minute, or None for the default."""
    return session.scalar(select(Tenant.rate_limit_per_minute).where(Tenant.id == tenant_id))


def set_rate_limit(session: Session, tenant_id: uuid.UUID, per_minute: int | None) -> bool:
    """Set a tenant's own rate limit (None: the default); return False if there is no such
    tenant. Every API process applies it within a second of the commit."""
    if per_minute is not None and per_minute < 1:
        raise ValueError("a rate limit is at least 1 a minute")
    done = affected(
        session.execute(
            update(Tenant).where(Tenant.id == tenant_id).values(rate_limit_per_minute=per_minute)
        )
    )
    if done:
        announce_after_commit(session)
    return bool(done)


def announce_after_commit(session: Session) -> None:
    """Write a new auth version to Redis once this session commits, so that every process
    forgets its cached keys: a key revoked, a limit changed."""
    if session.info.get("announce_auth_change"):
        return
    session.info["announce_auth_change"] = True

    def _announce(committed: Session) -> None:
        committed.info.pop("announce_auth_change", None)
        announce_auth_change()

    event.listen(session, "after_commit", _announce, once=True)


def announce_auth_change() -> None:
    """Write a new auth version to Redis; on failure, caches expire on their own."""
    import redis

    from webhooks.redis_client import get_redis

    try:
        get_redis().set(AUTH_VERSION_KEY, uuid.uuid4().hex)
    except redis.RedisError as exc:
        log.error(
            "could not announce a key revocation or limit change through Redis (%s): API "
            "processes apply it when their cached keys expire",
            exc,
        )


def list_keys(session: Session, tenant_id: uuid.UUID | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: uuid.UUID) -> bool:
    """Revoke a key by its ID; return False if there was no such live key."""
    done = affected(
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    )
    if done:
        announce_after_commit(session)
    return bool(done)
