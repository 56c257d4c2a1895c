"""filters: comparisons on an array field no longer look inside nested arrays

Revision ID: 20261130_0010
Revises: 20261130_0009
Create Date: 2026-11-30 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0010"
down_revision: str | Sequence[str] | None = "20261130_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Compile every stored filter again. The compiler is the service's own (the filter
    document is what the tenant gave; its jsonpath is derived): run at this revision, it is the
    one that leaves nested arrays out (webhooks/services/filters.py `_any`)."""
    from webhooks.services.filters import compile_filter

    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, filter FROM subscriptions WHERE filter IS NOT NULL")
    ).all()
    for subscription_id, document in rows:
        conn.execute(
            sa.text(
                "UPDATE subscriptions SET filter_path = CAST(:path AS jsonpath) WHERE id = :id"
            ),
            {"path": compile_filter(document), "id": subscription_id},
        )


def downgrade() -> None:
    """Nothing to undo: the paths compiled here are valid jsonpath for the code before it,
    which then keeps their stricter matching."""
