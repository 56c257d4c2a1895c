from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, Uuid, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from webhooks.db import Base, TenantListed, Timestamped, partial_index, uuid7


class Consumer(Timestamped, TenantListed, Base):
    """One of a tenant's own customers; events naming it go only to its subscriptions."""

    __tablename__ = "consumers"
    table_args = (
        # A deleted consumer keeps its row (its deliveries stay listable); its uid is free again.
        partial_index(
            "uq_consumers_tenant_id_uid",
            "tenant_id",
            "uid",
            unique=True,
            where="deleted_at IS NULL",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    # The tenant's own identifier for its customer.
    uid: Mapped[str] = mapped_column(String(200), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
