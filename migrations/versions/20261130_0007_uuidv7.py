"""uuidv7() for ids made in SQL, where the server has none (PostgreSQL before 18)

Revision ID: 20261130_0007
Revises: 20261130_0006
Create Date: 2026-11-30 06:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261130_0007"
down_revision: str | Sequence[str] | None = "20261130_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL 18 has uuidv7() built in (pg_catalog, which is searched first, so it takes over
# after an upgrade of the server). Before 18, this function of the same name makes the same
# RFC 9562 layout: 48 bits of unix milliseconds over a random (version 4) UUID, whose version
# bits are then turned from 4 (0100) into 7 (0111); its variant bits are already 10.
_CREATE = """
DO $do$
BEGIN
  IF current_setting('server_version_num')::int < 180000 THEN
    CREATE OR REPLACE FUNCTION uuidv7() RETURNS uuid
      LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $fn$
      SELECT encode(
        set_bit(set_bit(
          overlay(uuid_send(gen_random_uuid())
                  PLACING substring(
                    int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6),
          52, 1), 53, 1),
        'hex')::uuid
    $fn$;
  END IF;
END
$do$;
"""

_DROP = """
DO $do$
BEGIN
  IF current_setting('server_version_num')::int < 180000 THEN
    DROP FUNCTION IF EXISTS uuidv7();
  END IF;
END
$do$;
"""


def upgrade() -> None:
    """Give PostgreSQL before 18 the uuidv7() that 18 has."""
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(_DROP)
