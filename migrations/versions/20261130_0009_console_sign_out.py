"""console sign-out ends the sessions of its API key

Revision ID: 20261130_0009
Revises: 20261130_0008
Create Date: 2026-11-30 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0009"
down_revision: str | Sequence[str] | None = "20261130_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Sessions signed in before this have no generation in their cookie: they sign in again."""
    op.add_column(
        "api_keys",
        sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "session_generation")
