"""ordered delivery: fifo subscriptions, ordering keys, lanes

Revision ID: 20261130_0008
Revises: 20261130_0007
Create Date: 2026-11-30 06:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0008"
down_revision: str | Sequence[str] | None = "20261130_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "lane_id IS NOT NULL AND status IN ('pending', 'retrying', 'in_flight')"
_HOLDER = (
    "lane_id IS NOT NULL AND next_attempt_at IS NOT NULL"
    " AND status IN ('pending', 'retrying', 'in_flight')"
)


def upgrade() -> None:
    """Existing subscriptions keep `none`; existing deliveries have no lane."""
    op.add_column(
        "subscriptions",
        sa.Column("ordering", sa.String(length=8), server_default="none", nullable=False),
    )
    op.add_column("events", sa.Column("ordering_key", sa.String(length=200), nullable=True))
    op.create_table(
        "lanes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("ordering_key", sa.String(length=200), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_lanes_subscription_id_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lanes")),
        sa.UniqueConstraint("subscription_id", "ordering_key", name="uq_lanes_subscription_key"),
    )
    op.add_column("deliveries", sa.Column("lane_id", sa.BigInteger(), nullable=True))
    op.add_column("deliveries", sa.Column("lane_seq", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_deliveries_lane_open",
        "deliveries",
        ["lane_id", "lane_seq"],
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index(
        "ix_deliveries_lane_holder",
        "deliveries",
        ["subscription_id", "lane_id"],
        postgresql_where=sa.text(_HOLDER),
    )


def downgrade() -> None:
    """Deliveries waiting in a lane have no due time; the code before this revision only sends
    rows that are due, so they become due now, unordered, rather than never."""
    op.execute(
        "UPDATE deliveries SET next_attempt_at = now(), dispatched_at = NULL, updated_at = now()"
        " WHERE lane_id IS NOT NULL AND next_attempt_at IS NULL"
        " AND status IN ('pending', 'retrying')"
    )
    op.drop_index("ix_deliveries_lane_holder", table_name="deliveries")
    op.drop_index("ix_deliveries_lane_open", table_name="deliveries")
    op.drop_column("deliveries", "lane_seq")
    op.drop_column("deliveries", "lane_id")
    op.drop_table("lanes")
    op.drop_column("events", "ordering_key")
    op.drop_column("subscriptions", "ordering")
