from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, column_property, mapped_column

from webhooks.db import Base, TenantListed, Timestamped, partial_index, uuid7, value_enum
from webhooks.models.event import Event


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptResult(enum.StrEnum):
    SUCCESS = "success"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    REFUSED = "refused"
    # Not sent: the worker died or hung past its lease, so the outcome is unknown.
    LEASE_EXPIRED = "lease_expired"
    # Not sent: an error on our side while preparing the request (a bug, an unreadable secret).
    ERROR = "error"


class Delivery(Timestamped, TenantListed, Base):
    """One event on its way to one subscription; its ID is the stable `webhook-id`."""

    __tablename__ = "deliveries"
    table_args = (
        Index("ix_deliveries_tenant_id_status_id", "tenant_id", "status", "id"),
        Index("ix_deliveries_subscription_id_id", "subscription_id", "id"),
        Index("ix_deliveries_event_id", "event_id"),
        # The watchdog's scans: due work, expired leases, parked work per subscription.
        partial_index(
            "ix_deliveries_due",
            "next_attempt_at",
            where="status IN ('pending', 'retrying') AND NOT parked",
        ),
        partial_index("ix_deliveries_in_flight", "lease_expires_at", where="status = 'in_flight'"),
        partial_index("ix_deliveries_parked", "subscription_id", "id", where="parked"),
        # Ordered lanes (webhooks.services.lanes): the unfinished deliveries of a lane in order,
        # and each lane's holder, the one unfinished delivery that has a due time.
        partial_index(
            "ix_deliveries_lane_open",
            "lane_id",
            "lane_seq",
            where="lane_id IS NOT NULL AND status IN ('pending', 'retrying', 'in_flight')",
        ),
        partial_index(
            "ix_deliveries_lane_holder",
            "subscription_id",
            "lane_id",
            where="lane_id IS NOT NULL AND next_attempt_at IS NOT NULL"
            " AND status IN ('pending', 'retrying', 'in_flight')",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    )
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[DeliveryStatus] = mapped_column(
        value_enum(DeliveryStatus), nullable=False, default=DeliveryStatus.PENDING
    )
    # Every attempt made, probes included; numbers the attempts.
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Failed attempts that count against WEBHOOKS_RETRY_DELAYS in the current cycle.
    # A manual retry resets it; a failed probe of a half-open circuit does not add to it.
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When it was last handed to the scheduler; the watchdog hands lost ones over again. For a
    # row the scheduler still held when the watchdog looked, a time ahead: when to look again
    # (services/watchdog.py, _HELD). Internal, never shown.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Waiting in PostgreSQL behind an open circuit; spends no attempts.
    parked: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    # A fifo subscription's delivery: its lane (webhooks.models.lane) and its place in it. While
    # an earlier one of its lane is unfinished it waits with no due time (next_attempt_at NULL).
    lane_id: Mapped[int | None] = mapped_column(BigInteger)
    lane_seq: Mapped[int | None] = mapped_column(BigInteger)
    # The event's, for the API (one primary-key lookup per delivery shown).
    ordering_key: Mapped[str | None] = column_property(
        select(Event.ordering_key)
        .where(Event.id == event_id)
        .correlate_except(Event)  # its own lookup, also where a query joins events
        .scalar_subquery()
    )


class Attempt(Timestamped, Base):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_delivery_id_number", "delivery_id", "number"),
        # Per-subscription statistics over a time window (the stats API, the console) read
        # only this index: a range of one subscription's attempts, result and duration included.
        Index(
            "ix_attempts_subscription_id_created_at",
            "subscription_id",
            "created_at",
            postgresql_include=["result", "duration_ms"],
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
    )
    # Copied from the delivery by a trigger on insert (migration 20261130_0005), so every writer
    # fills it; no foreign key, the delivery's own already ties the row to its subscription.
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    result: Mapped[AttemptResult] = mapped_column(value_enum(AttemptResult), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_truncated: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    url: Mapped[str | None] = mapped_column(String(2048))
