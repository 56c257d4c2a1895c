"""lanes: when each was last numbered, so that retention can remove idle ones

Revision ID: 20261130_0011
Revises: 20261130_0010
Create Date: 2026-11-30 15:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0011"
down_revision: str | Sequence[str] | None = "20261130_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Existing lanes count as numbered now: retention removes them a period from today."""
    op.add_column(
        "lanes",
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("lanes", "updated_at")
