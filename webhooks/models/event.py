from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint, Uuid, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webhooks.db import Base, TenantListed, Timestamped, uuid7
from webhooks.models.consumer import Consumer

# The event types the service emits itself (services/operational.py). Tenants subscribe to
# them by name (`*` leaves them out) and never publish them. The ingest and operational SQL
# spell the prefix as 'webhook.' too.
OPERATIONAL_PREFIX = "webhook."
SUBSCRIPTION_DISABLED = "webhook.subscription.disabled"
DELIVERY_FAILED = "webhook.delivery.failed"
CIRCUIT_OPENED = "webhook.circuit.opened"
CIRCUIT_CLOSED = "webhook.circuit.closed"
OPERATIONAL_TYPES = (SUBSCRIPTION_DISABLED, DELIVERY_FAILED, CIRCUIT_OPENED, CIRCUIT_CLOSED)


class Event(Timestamped, TenantListed, Base):
    __tablename__ = "events"
    table_args = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_events_tenant_idempotency_key"),
        Index("ix_events_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    event_type: Mapped[str] = mapped_column(String(200), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONB, nullable=False)
    consumer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("consumers.id", ondelete="CASCADE")
    )
    channels: Mapped[list[str]] = mapped_column(
        ARRAY(String(128)), nullable=False, server_default=text("'{}'")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the request body, to tell a repeated request from a reused key.
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # Deliveries to a fifo subscription with the same key go out one at a time, in order.
    ordering_key: Mapped[str | None] = mapped_column(String(200))
    consumer: Mapped[Consumer | None] = relationship(lazy="joined")

    @property
    def consumer_uid(self) -> str | None:
        return self.consumer.uid if self.consumer is not None else None
