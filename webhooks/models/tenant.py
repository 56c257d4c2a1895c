from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from webhooks.db import Base, Timestamped, uuid7


class Tenant(Timestamped, Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("rate_limit_per_minute > 0", name="rate_limit_per_minute_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # API requests (events, for ingest) a minute; null: the WEBHOOKS_RATE_LIMIT default.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)


class ApiKey(Timestamped, Base):
    """An API key, kept only as its SHA-256: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # The first characters of the key, so an operator can tell keys apart without the secret.
    prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Console sessions hold the generation they began in; signing out moves it on, which ends
    # them all (services/signin.py).
    session_generation: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
