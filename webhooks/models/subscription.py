from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, base
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import UserDefinedType

from webhooks.db import Base, TenantListed, Timestamped, partial_index, uuid7, value_enum
from webhooks.models.consumer import Consumer


class JsonPath(UserDefinedType[str]):
    """PostgreSQL's `jsonpath`: parsed once when stored, matched with `@@` (a string in Python).

    SQLAlchemy's JSONPATH is another thing (a path array for `#>`), and binds None as '{}'.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSONPATH"


# Reflection knows the type then, so that autogenerate compares it (as GeoAlchemy registers
# its types).
base.ischema_names.setdefault("jsonpath", JsonPath)

# Concurrent attempts a subscription may have when it does not say.
DEFAULT_MAX_IN_FLIGHT = 10


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class Subscription(Timestamped, TenantListed, Base):
    __tablename__ = "subscriptions"
    table_args = (
        # Ingest looks up the live subscriptions of one tenant and one consumer (or none) on
        # every event: a tenant's other consumers' subscriptions are never read.
        partial_index(
            "ix_subscriptions_live",
            "tenant_id",
            "consumer_id",
            where="status = 'active' AND deleted_at IS NULL",
        ),
        Index("ix_subscriptions_consumer_id_id", "consumer_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # The consumer it belongs to, or None: the tenant's own.
    consumer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE")
    )
    # Empty: every event. Otherwise only events that share one of these channels.
    channels: Mapped[list[str]] = mapped_column(
        ARRAY(String(128)), nullable=False, server_default=text("'{}'")
    )
    # The payload filter as given, and compiled to the jsonpath predicate ingest matches with.
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    filter_path: Mapped[str | None] = mapped_column(JsonPath)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    # Custom headers: their names here, each with a redacted value (what the API shows); the
    # values, often the receiver's credentials, only in headers_ciphertext (webhooks.crypto).
    headers: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    headers_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # "hmac-sha256" (secret_ciphertext holds a whsec_ secret) or "ed25519" (a whsk_ signing key,
    # whose whpk_ public key is public_key).
    signature_scheme: Mapped[str] = mapped_column(
        String(16), nullable=False, default="hmac-sha256", server_default="hmac-sha256"
    )
    public_key: Mapped[str | None] = mapped_column(Text)
    status: Mapped[SubscriptionStatus] = mapped_column(
        value_enum(SubscriptionStatus), nullable=False, default=SubscriptionStatus.ACTIVE
    )
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Signing secrets, encrypted with WEBHOOKS_SECRET_KEY (see webhooks.crypto).
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Scheduler limits, enforced across all workers (webhooks.scheduler).
    rate_limit: Mapped[int | None] = mapped_column(Integer)  # deliveries per second
    max_in_flight: Mapped[int] = mapped_column(
        Integer, nullable=False, default=DEFAULT_MAX_IN_FLIGHT, server_default=text("10")
    )
    # "none" or "fifo" (webhooks.models.lane).
    ordering: Mapped[str] = mapped_column(
        String(8), nullable=False, default="none", server_default="none"
    )
    consumer: Mapped[Consumer | None] = relationship(lazy="joined")

    @property
    def consumer_uid(self) -> str | None:
        return self.consumer.uid if self.consumer is not None else None
