"""Tenants and their API keys: random, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from webhooks.db import affected, uuid7
from webhooks.models import ApiKey, Tenant

KEY_PREFIX = "whk_"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant with one API key; return both (the key is not stored)."""
    tenant = Tenant(id=uuid7(), name=name)
    session.add(tenant)
    session.flush()
    key = issue_key(session, tenant.id)
    return tenant, key


def issue_key(session: Session, tenant_id: uuid.UUID) -> str:
    """Make a new API key for a tenant and return it; only its hash is kept."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=uuid7(), tenant_id=tenant_id, prefix=key[:12], key_hash=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> uuid.UUID | None:
    """Return the tenant of a valid, unrevoked key, or None."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key)
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.key_hash).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    # The lookup is by hash; compare again in constant time so no path depends on the bytes.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.tenant_id


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
    return bool(done)
