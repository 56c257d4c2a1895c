"""hardening: custom headers encrypted at rest, Ed25519 signatures

Revision ID: 20261130_0003
Revises: 0001
Create Date: 2026-11-30 03:30:00

Existing custom headers are encrypted here, under WEBHOOKS_SECRET_KEY (the release process has
it, as every process does), and the plain column keeps only their names with redacted values.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261130_0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_subscriptions = sa.table(
    "subscriptions",
    sa.column("id", sa.Uuid()),
    sa.column("headers", sa.JSON()),
    sa.column("headers_ciphertext", sa.LargeBinary()),
)


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("headers_ciphertext", sa.LargeBinary(), nullable=True))
    op.add_column(
        "subscriptions",
        sa.Column(
            "signature_scheme",
            sa.String(length=16),
            server_default="hmac-sha256",
            nullable=False,
        ),
    )
    op.add_column("subscriptions", sa.Column("public_key", sa.Text(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_subscriptions.c.id, _subscriptions.c.headers).where(
            sa.text("headers <> '{}'::jsonb")
        )
    ).all()
    if not rows:
        return
    from webhooks.crypto import encrypt_headers, redacted

    for row in rows:
        headers = {str(k): str(v) for k, v in row.headers.items()}
        conn.execute(
            _subscriptions.update()
            .where(_subscriptions.c.id == row.id)
            .values(
                headers=redacted(headers),
                headers_ciphertext=encrypt_headers(headers, str(row.id).encode()),
            )
        )


def downgrade() -> None:
    conn = op.get_bind()
    ed25519 = conn.scalar(
        sa.text("SELECT count(*) FROM subscriptions WHERE signature_scheme = 'ed25519'")
    )
    if ed25519:
        # The earlier schema can only sign with HMAC secrets: these would stop being delivered.
        raise RuntimeError(
            f"{ed25519} subscriptions sign with ed25519: rotate them to hmac-sha256 "
            "(PATCH signature_scheme) before downgrading"
        )
    rows = conn.execute(
        sa.select(_subscriptions.c.id, _subscriptions.c.headers_ciphertext).where(
            _subscriptions.c.headers_ciphertext.is_not(None)
        )
    ).all()
    if rows:
        from webhooks.crypto import decrypt_headers

        for row in rows:
            conn.execute(
                _subscriptions.update()
                .where(_subscriptions.c.id == row.id)
                .values(headers=decrypt_headers(row.headers_ciphertext, str(row.id).encode()))
            )
    op.drop_column("subscriptions", "public_key")
    op.drop_column("subscriptions", "signature_scheme")
    op.drop_column("subscriptions", "headers_ciphertext")
