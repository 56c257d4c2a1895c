from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    String,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from webhooks.db import Base

# How a subscription orders its deliveries: "none" (any order, the default) or "fifo" (one lane
# per ordering key, strictly in ingest order; see webhooks.services.lanes).
ORDERING_NONE = "none"
ORDERING_FIFO = "fifo"
ORDERINGS = (ORDERING_NONE, ORDERING_FIFO)
# The lane of a fifo subscription's events that carry no ordering key.
NO_KEY = ""


class Lane(Base):
    """One ordering key of one fifo subscription: it numbers the key's deliveries in the order
    their ingest transactions commit, and its row lock is what orders those commits."""

    __tablename__ = "lanes"
    __table_args__ = (
        UniqueConstraint("subscription_id", "ordering_key", name="uq_lanes_subscription_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    ordering_key: Mapped[str] = mapped_column(String(200), nullable=False)
    # The sequence number given to the lane's latest delivery (0: none yet).
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    # When it last numbered a delivery: retention removes a lane idle for its period with no
    # unfinished delivery (services/retention.py).
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
