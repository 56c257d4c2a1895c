"""Console sign-in: an API key opens a session; the session holds the key's ID, never the key.

Each request checks that the key is still live, so revoking a key also ends its sessions, and
that the key's session generation is still the one the session began in: signing out moves it
on, which ends every console session of that key, copies of the cookie included.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from webhooks.models import ApiKey, Tenant
from webhooks.services.tenants import authenticate, hash_key


@dataclass(frozen=True)
class Operator:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    key_prefix: str
    session_generation: int


def _operator(session: Session, *where: object) -> Operator | None:
    row = session.execute(
        select(
            ApiKey.id,
            ApiKey.prefix,
            ApiKey.session_generation,
            Tenant.id.label("tenant_id"),
            Tenant.name,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.revoked_at.is_(None), *where)  # type: ignore[arg-type]
    ).first()
    if row is None:
        return None
    return Operator(row.tenant_id, row.name, row.id, row.prefix, row.session_generation)


def sign_in(session: Session, key: str) -> Operator | None:
    """Return who a valid, unrevoked API key signs in, or None."""
    if authenticate(session, key) is None:
        return None
    return _operator(session, ApiKey.key_hash == hash_key(key))


def operator(session: Session, key_id: uuid.UUID) -> Operator | None:
    """Return who a session's key signs in, or None once the key is revoked or gone."""
    return _operator(session, ApiKey.id == key_id)


def sign_out(session: Session, key_id: uuid.UUID) -> None:
    """End every console session of this key: each one began in an earlier generation."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(session_generation=ApiKey.session_generation + 1)
    )
