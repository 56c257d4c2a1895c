"""routing: consumers, channels, payload filters, the event-type catalogue

Revision ID: 20261130_0004
Revises: 0001
Create Date: 2026-11-30 03:30:00

Every new column is nullable or has a constant default, so existing rows need no rewrite and
behave as before: a subscription without consumer, channels or filter gets what it got.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261130_0004"
down_revision: str | Sequence[str] | None = "20261130_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status = 'active' AND deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("uid", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_consumers_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumers")),
    )
    op.create_index(
        "uq_consumers_tenant_id_uid",
        "consumers",
        ["tenant_id", "uid"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index("ix_consumers_tenant_id_id", "consumers", ["tenant_id", "id"])

    op.create_table(
        "event_types",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("schema", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("archived", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_event_types_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_types")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_event_types_tenant_id_name"),
    )

    op.add_column("subscriptions", sa.Column("consumer_id", sa.Uuid(), nullable=True))
    op.add_column(
        "subscriptions",
        sa.Column(
            "channels",
            postgresql.ARRAY(sa.String(length=128)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.add_column(
        "subscriptions",
        sa.Column("filter", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    # jsonpath: parsed once here, matched by ingest with `@@` (models.subscription.JsonPath).
    op.execute("ALTER TABLE subscriptions ADD COLUMN filter_path jsonpath")
    op.create_foreign_key(
        op.f("fk_subscriptions_consumer_id_consumers"),
        "subscriptions",
        "consumers",
        ["consumer_id"],
        ["id"],
        ondelete="CASCADE",
    )
    # Ingest's lookup now narrows to one consumer (or none) within the tenant.
    op.drop_index("ix_subscriptions_live", table_name="subscriptions")
    op.create_index(
        "ix_subscriptions_live",
        "subscriptions",
        ["tenant_id", "consumer_id"],
        postgresql_where=LIVE,
    )
    op.create_index("ix_subscriptions_consumer_id_id", "subscriptions", ["consumer_id", "id"])

    op.add_column("events", sa.Column("consumer_id", sa.Uuid(), nullable=True))
    op.add_column(
        "events",
        sa.Column(
            "channels",
            postgresql.ARRAY(sa.String(length=128)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.create_foreign_key(
        op.f("fk_events_consumer_id_consumers"),
        "events",
        "consumers",
        ["consumer_id"],
        ["id"],
        ondelete="CASCADE",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_events_consumer_id_consumers"), "events", type_="foreignkey")
    op.drop_column("events", "channels")
    op.drop_column("events", "consumer_id")
    op.drop_index("ix_subscriptions_consumer_id_id", table_name="subscriptions")
    op.drop_index("ix_subscriptions_live", table_name="subscriptions")
    op.create_index("ix_subscriptions_live", "subscriptions", ["tenant_id"], postgresql_where=LIVE)
    op.drop_constraint(
        op.f("fk_subscriptions_consumer_id_consumers"), "subscriptions", type_="foreignkey"
    )
    op.drop_column("subscriptions", "filter_path")
    op.drop_column("subscriptions", "filter")
    op.drop_column("subscriptions", "channels")
    op.drop_column("subscriptions", "consumer_id")
    op.drop_table("event_types")
    op.drop_index("ix_consumers_tenant_id_id", table_name="consumers")
    op.drop_index("uq_consumers_tenant_id_uid", table_name="consumers")
    op.drop_table("consumers")
