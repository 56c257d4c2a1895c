"""console: attempts carry their subscription, indexed for per-subscription statistics

The stats API and the console read one subscription's attempts over the last hour, day or week.
Through deliveries that needs every delivery of the subscription (old ones too: a replay makes
new attempts on old deliveries). With the subscription on the attempt, one range of the index
(subscription_id, created_at), which includes result and duration, answers it without touching
the table (an index-only scan), however many attempts other subscriptions have.

A trigger copies the subscription from the delivery on insert, so every writer (the worker, the
watchdog, anything later) fills the column without knowing about it.

Revision ID: 20261130_0005
Revises: 20261130_0004
Create Date: 2026-11-30 03:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0005"
down_revision: str | Sequence[str] | None = "20261130_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("subscription_id", sa.Uuid(), nullable=True))
    op.execute(
        """
        CREATE FUNCTION attempts_fill_subscription_id() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.subscription_id IS NULL THEN
            SELECT subscription_id INTO NEW.subscription_id
              FROM deliveries WHERE id = NEW.delivery_id;
          END IF;
          RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER attempts_fill_subscription_id BEFORE INSERT ON attempts"
        " FOR EACH ROW EXECUTE FUNCTION attempts_fill_subscription_id()"
    )
    op.execute(
        "UPDATE attempts AS a SET subscription_id = d.subscription_id"
        " FROM deliveries AS d WHERE d.id = a.delivery_id AND a.subscription_id IS NULL"
    )
    op.create_index(
        "ix_attempts_subscription_id_created_at",
        "attempts",
        ["subscription_id", "created_at"],
        unique=False,
        postgresql_include=["result", "duration_ms"],
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_subscription_id_created_at", table_name="attempts")
    op.execute("DROP TRIGGER attempts_fill_subscription_id ON attempts")
    op.execute("DROP FUNCTION attempts_fill_subscription_id()")
    op.drop_column("attempts", "subscription_id")
