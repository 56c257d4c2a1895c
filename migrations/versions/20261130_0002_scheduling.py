"""per-subscription limits for the scheduler: rate_limit and max_in_flight

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 03:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing subscriptions get the default limit, no rate limit: they behave as before.
    op.add_column("subscriptions", sa.Column("rate_limit", sa.Integer(), nullable=True))
    op.add_column(
        "subscriptions",
        sa.Column("max_in_flight", sa.Integer(), server_default=sa.text("10"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("subscriptions", "max_in_flight")
    op.drop_column("subscriptions", "rate_limit")
