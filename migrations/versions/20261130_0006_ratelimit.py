"""per-tenant rate limit

Revision ID: 20261130_0006
Revises: 0001
Create Date: 2026-11-30 03:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0006"
# The initial schema's revision ID is "0001" (its file is 20261129_0001_...); the lead re-chains.
down_revision: str | Sequence[str] | None = "20261130_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the optional per-tenant rate limit (null: the WEBHOOKS_RATE_LIMIT default)."""
    op.add_column("tenants", sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_tenants_rate_limit_per_minute_positive"), "tenants", "rate_limit_per_minute > 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_rate_limit_per_minute_positive"), "tenants", type_="check")
    op.drop_column("tenants", "rate_limit_per_minute")
