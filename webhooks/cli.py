"""Administration commands: `flask --app webhooks <command>`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
from flask import Flask
from flask.cli import AppGroup

from config import MAX_RETENTION_DAYS
from webhooks.crypto import current_key_id
from webhooks.db import session_scope
from webhooks.models import Delivery, Subscription
from webhooks.services import ServiceError, queries, recovery, retention, secret_keys, tenants
from webhooks.services.paging import MAX_PAGE

MAX_RATE_LIMIT = 2**31 - 1  # the column is a PostgreSQL integer

# A container only: each command is added at the top level (`flask --app webhooks replay`),
# within the app context (AppGroup.command sees to that).
commands = AppGroup("webhooks")


def register_commands(app: Flask) -> None:
    """Add the administration commands to `flask --app webhooks`."""
    for command in commands.commands.values():
        app.cli.add_command(command)


@contextmanager
def _refusals_as_errors() -> Iterator[None]:
    """Print a refused operation (in progress, disabled, not found) as a one-line error."""
    try:
        yield
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None


@commands.command("create-tenant")
@click.argument("name")
def create_tenant(name: str) -> None:
    """Create a tenant and print its API key on the last line."""
    with _refusals_as_errors(), session_scope() as session:
        tenant, key = tenants.create_tenant(session, name)
        tenant_id = tenant.id
    click.echo(f"tenant {tenant_id} ({name}) created; its API key (shown once):")
    click.echo(key)


@commands.command("create-key")
@click.argument("tenant_id", type=click.UUID)
def create_key(tenant_id: uuid.UUID) -> None:
    """Issue another API key for a tenant and print it on the last line."""
    with _refusals_as_errors(), session_scope() as session:
        key = tenants.issue_key(session, tenant_id)
    click.echo(key)


@commands.command("list-keys")
@click.option("--tenant", "tenant_id", type=click.UUID, default=None)
def list_keys(tenant_id: uuid.UUID | None) -> None:
    """List API keys (ID, tenant, prefix, created, revoked); never the keys themselves."""
    with session_scope() as session:
        for key in tenants.list_keys(session, tenant_id):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            click.echo(
                f"{key.id}  {key.tenant_id}  {key.prefix}…  "
                f"{key.created_at.isoformat()}  revoked={revoked}"
            )


@commands.command("revoke-key")
@click.argument("key_id", type=click.UUID)
def revoke_key(key_id: uuid.UUID) -> None:
    """Revoke an API key by its ID."""
    with session_scope() as session:
        if not tenants.revoke_key(session, key_id):
            raise click.ClickException(f"no live key {key_id}")
    click.echo(f"revoked {key_id}")


@commands.command("set-tenant-rate-limit")
@click.argument("tenant_id", type=click.UUID)
@click.argument("per_minute")
def set_tenant_rate_limit(tenant_id: uuid.UUID, per_minute: str) -> None:
    """Set a tenant's API requests (events, for ingest) a minute, or `default`."""
    if per_minute.lower() == "default":
        value = None
    else:
        try:
            value = int(per_minute)
        except ValueError:
            value = 0
        if not 1 <= value <= MAX_RATE_LIMIT:
            raise click.BadParameter(
                f"a whole number from 1 to {MAX_RATE_LIMIT}, or 'default'; got {per_minute!r}",
                param_hint="PER_MINUTE",
            )
    with session_scope() as session:
        if not tenants.set_rate_limit(session, tenant_id, value):
            raise click.ClickException(f"no tenant {tenant_id}")
    shown = "the default (WEBHOOKS_RATE_LIMIT)" if value is None else f"{value} a minute"
    click.echo(f"tenant {tenant_id}: rate limit {shown}")


@commands.command("retry-delivery")
@click.argument("delivery_id", type=click.UUID)
def retry_delivery(delivery_id: uuid.UUID) -> None:
    """Give a finished delivery a fresh set of attempts."""
    with session_scope() as session:
        tenant_id = queries.owner(session, Delivery, delivery_id)
        if tenant_id is None:
            raise click.ClickException(f"no delivery {delivery_id}")
        with _refusals_as_errors():
            recovery.retry(session, tenant_id, delivery_id)
    click.echo(f"requeued {delivery_id}")


@commands.command("replay")
@click.argument("subscription_id", type=click.UUID)
@click.option("--since", type=click.DateTime(), required=True)
@click.option("--until", type=click.DateTime(), default=None)
@click.option("--status", type=click.Choice(["delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=None, help="default: 1000")
def replay(
    subscription_id: uuid.UUID,
    since: datetime,
    until: datetime | None,
    status: str | None,
    limit: int | None,
) -> None:
    """Replay a subscription's finished deliveries created in a time range (UTC)."""
    with session_scope() as session:
        tenant_id = queries.owner(session, Subscription, subscription_id)
        if tenant_id is None:
            raise click.ClickException(f"no subscription {subscription_id}")
        with _refusals_as_errors():
            count, more = recovery.replay(
                session,
                tenant_id,
                subscription_id,
                since.replace(tzinfo=UTC),
                until.replace(tzinfo=UTC) if until else None,
                status,
                limit,
            )
    click.echo(f"requeued {count}" + (" (more remain: run again)" if more else ""))


@commands.command("dead-letters")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True)
def dead_letters(limit: int) -> None:
    """List the most recent failed deliveries."""
    with session_scope() as session:
        for d in queries.recent_failures(session, limit):
            click.echo(
                f"{d.id}  sub={d.subscription_id}  attempts={d.attempt_count}  {d.last_error or ''}"
            )


@commands.command("rotate-secret-key")
def rotate_secret_key() -> None:
    """Re-encrypt every stored secret and custom header under WEBHOOKS_SECRET_KEY.

    Run it once every process has the new key in WEBHOOKS_SECRET_KEY and the old one in
    WEBHOOKS_PREVIOUS_SECRET_KEYS (docs/security.md); afterwards the old key can go.
    """
    try:
        done = secret_keys.reencrypt_all()
    except ValueError as exc:
        raise click.ClickException(
            f"{exc}; add that key to WEBHOOKS_PREVIOUS_SECRET_KEYS and run again"
        ) from None
    click.echo(
        f"re-encrypted {done.rewritten} values of {done.subscriptions} subscriptions under "
        f"key {current_key_id()}; WEBHOOKS_PREVIOUS_SECRET_KEYS is no longer needed"
    )


@commands.command("purge")
@click.option(
    "--days",
    type=click.IntRange(1, MAX_RETENTION_DAYS),
    default=None,
    help="default: WEBHOOKS_RETENTION_DAYS",
)
def purge(days: int | None) -> None:
    """Delete events older than the retention period, with their deliveries and attempts."""
    click.echo(f"deleted {retention.purge(days)} events")
