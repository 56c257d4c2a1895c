"""Create, change, delete and inspect subscriptions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from config import get_settings
from webhooks import metrics
from webhooks.crypto import (
    REDACTED,
    decrypt_headers,
    encrypt_headers,
    encrypt_secret,
    redacted,
)
from webhooks.db import affected, locking, uuid7
from webhooks.http import AddressRefused, check_url
from webhooks.models import Consumer, Delivery, DeliveryStatus, Subscription
from webhooks.models.lane import ORDERING_FIFO, ORDERING_NONE
from webhooks.models.subscription import DEFAULT_MAX_IN_FLIGHT, SubscriptionStatus
from webhooks.runtime import get_breaker
from webhooks.services import (
    Invalid,
    NotFound,
    consumers,
    event_types,
    filters,
    lanes,
    operational,
    scheduling,
)
from webhooks.services.paging import Page, keyset
from webhooks.signing import HMAC_SHA256, new_key_material


def _check_target(url: str) -> None:
    try:
        settings = get_settings()
        check_url(url, settings.allow_private_targets, settings.dns_timeout)
    except AddressRefused as exc:
        raise Invalid(f"url is refused: {exc}", {"fields": {"url": [str(exc)]}}) from None


def _consumer(session: Session, tenant_id: uuid.UUID, uid: str | None) -> Consumer | None:
    """Return the live consumer a body names by uid (None for the tenant's own), or 422."""
    if uid is None:
        return None
    try:
        # Shared: a concurrent delete of the consumer waits for this transaction, and then
        # finds the subscription it makes (or this one finds the consumer gone).
        return consumers.get(session, tenant_id, uid, lock="share")
    except NotFound:
        raise Invalid("no such consumer", {"fields": {"consumer": ["no such consumer"]}}) from None


def live(tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The condition for the tenant's subscriptions that are not deleted."""
    return and_(Subscription.tenant_id == tenant_id, Subscription.deleted_at.is_(None))


def get(
    session: Session,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    *,
    lock: str | None = None,
) -> Subscription:
    """Return one of the tenant's live subscriptions, or raise NotFound.

    `lock` (db.locking): "update" for a change made from what was read (rotating a secret keeps
    the current one as the previous), which must not race another change; "share" for work
    that must not race a change of it (a retry restarting deliveries must not interleave with a
    disable, which ends them). Neither waits for ingest."""
    query = select(Subscription).where(live(tenant_id), Subscription.id == subscription_id)
    query = locking(query, Subscription, lock)
    found = session.scalar(query)
    if found is None:
        raise NotFound("no such subscription", {"id": str(subscription_id)})
    return found


def _set_headers(subscription: Subscription, headers: dict[str, str]) -> None:
    """Store custom headers encrypted, and their names with redacted values in the clear."""
    associated = str(subscription.id).encode()
    stored = decrypt_headers(subscription.headers_ciphertext, associated)
    # A value sent back as the API shows it (redacted) keeps the stored value: a client may
    # GET a subscription, change one header and PATCH them all back.
    headers = {k: stored[k] if v == REDACTED and k in stored else v for k, v in headers.items()}
    subscription.headers = redacted(headers)
    subscription.headers_ciphertext = encrypt_headers(headers, associated)


def create(
    session: Session, tenant_id: uuid.UUID, data: dict[str, Any]
) -> tuple[Subscription, str | None]:
    """Create a subscription; return it with its new signing secret (shown only now), or None
    for an ed25519 subscription, whose private key is never shown (its public key is)."""
    _check_target(data["url"])
    event_types.check_subscribable(session, tenant_id, data["event_types"])
    consumer = _consumer(session, tenant_id, data.get("consumer"))
    scheme = data.get("signature_scheme") or HMAC_SHA256
    secret, public_key = new_key_material(scheme)
    subscription = Subscription(
        id=uuid7(),
        tenant_id=tenant_id,
        url=data["url"],
        event_types=sorted(set(data["event_types"])),
        description=data.get("description"),
        status=SubscriptionStatus.ACTIVE,
        rate_limit=data.get("rate_limit"),
        max_in_flight=data.get("max_in_flight") or DEFAULT_MAX_IN_FLIGHT,
        ordering=data.get("ordering") or ORDERING_NONE,
        signature_scheme=scheme,
        public_key=public_key,
        consumer=consumer,
        channels=sorted(set(data.get("channels") or [])),
    )
    _set_headers(subscription, data.get("headers") or {})
    _set_filter(subscription, data.get("filter"))
    subscription.secret_ciphertext = encrypt_secret(secret, str(subscription.id).encode())
    session.add(subscription)
    session.commit()
    return subscription, secret if scheme == HMAC_SHA256 else None


def update_one(
    session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID, data: dict[str, Any]
) -> Subscription:
    """Change the given fields; re-enabling a subscription closes its circuit."""
    if "url" in data:
        _check_target(data["url"])  # a DNS lookup: before the row is locked, not under it
    subscription = get(session, tenant_id, subscription_id, lock="update")
    if "url" in data:
        subscription.url = data["url"]
    if "event_types" in data:
        event_types.check_subscribable(session, tenant_id, data["event_types"])
        subscription.event_types = sorted(set(data["event_types"]))
    if "description" in data:
        subscription.description = data["description"]
    if "headers" in data:
        _set_headers(subscription, data["headers"] or {})
    if "consumer" in data:
        subscription.consumer = _consumer(session, tenant_id, data["consumer"])
    if "channels" in data:
        subscription.channels = sorted(set(data["channels"] or []))
    if "filter" in data:
        _set_filter(subscription, data["filter"])
    limits_changed = False
    for name in ("rate_limit", "max_in_flight"):
        if name in data and (data[name] is not None or name == "rate_limit"):
            limits_changed |= getattr(subscription, name) != data[name]
            setattr(subscription, name, data[name])
    if data.get("ordering", subscription.ordering) != subscription.ordering:
        if subscription.ordering == ORDERING_FIFO:
            # Its waiting deliveries become due, unordered; only new ones are ordered later.
            lanes.release(session, subscription.id)
        subscription.ordering = data["ordering"]
    status = data.get("status")
    if status == "active" and subscription.status != SubscriptionStatus.ACTIVE:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.disabled_reason = None
        get_breaker().reset(str(subscription.id))
    elif status == "disabled" and subscription.status != SubscriptionStatus.DISABLED:
        disable_subscription(session, subscription.id, "disabled through the API")
        session.refresh(subscription)
    session.commit()
    if limits_changed:
        scheduling.configure(
            subscription.id, tenant_id, subscription.max_in_flight, subscription.rate_limit
        )
    return subscription


def delete(session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
    """Delete a subscription; its unfinished deliveries end as failed, its history stays."""
    remove(session, get(session, tenant_id, subscription_id, lock="update"))
    session.commit()


def remove(session: Session, subscription: Subscription) -> None:
    """Delete a subscription within the caller's transaction (see `delete`)."""
    # Marked deleted first: a deleted subscription is not reported as disabled.
    subscription.deleted_at = datetime.now(UTC)
    session.flush()
    disable_subscription(session, subscription.id, "subscription deleted")


def list_(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: str | uuid.UUID | None = None,
    consumer: str | None = None,
) -> Page[Subscription]:
    """Return a page of live subscriptions, newest first, after the ID `after`; only those of
    the consumer with this uid when one is given."""
    query = select(Subscription).where(live(tenant_id))
    if consumer is not None:
        query = query.where(Subscription.consumer_id.in_(consumers.ids_of(tenant_id, consumer)))
    return keyset(session, query, Subscription.id, after, limit)


def _set_filter(subscription: Subscription, document: dict[str, Any] | None) -> None:
    """Keep the filter as given and compiled to the jsonpath predicate that ingest matches."""
    subscription.filter = document or None
    subscription.filter_path = filters.compile_filter(document) if document else None


def rotate_secret(
    session: Session,
    tenant_id: uuid.UUID,
    subscription_id: uuid.UUID,
    scheme: str | None = None,
) -> tuple[Subscription, str | None]:
    """Make a new secret (or Ed25519 key pair), of `scheme` if given; the old one keeps signing
    too until the grace period ends. Return the new HMAC secret, or None for ed25519."""
    subscription = get(session, tenant_id, subscription_id, lock="update")
    associated = str(subscription.id).encode()
    scheme = scheme or subscription.signature_scheme
    secret, public_key = new_key_material(scheme)
    subscription.previous_secret_ciphertext = subscription.secret_ciphertext
    subscription.previous_secret_expires_at = datetime.now(UTC) + timedelta(
        seconds=get_settings().rotation_grace
    )
    subscription.secret_ciphertext = encrypt_secret(secret, associated)
    subscription.signature_scheme = scheme
    subscription.public_key = public_key
    session.commit()
    return subscription, secret if scheme == HMAC_SHA256 else None


def health(session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> dict[str, Any]:
    """Return the circuit state and the delivery counts of a subscription."""
    subscription = get(session, tenant_id, subscription_id)
    counts = {status.value: 0 for status in DeliveryStatus}
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.subscription_id == subscription.id)
        .group_by(Delivery.status)
    ).all()
    for status, count in rows:
        counts[DeliveryStatus(status).value] = count
    parked = session.scalar(
        select(func.count()).where(Delivery.subscription_id == subscription.id, Delivery.parked)
    )
    circuit = get_breaker().state(str(subscription.id))
    return {
        "subscription_id": subscription.id,
        "status": subscription.status.value,
        "circuit": {
            "state": circuit["state"],
            # With Redis unreachable the breaker answers only {"state": "unknown"}.
            "consecutive_failures": circuit.get("consecutive_failures"),
            "opened_at": _when(circuit.get("opened_at")),
            "probe_at": _when(circuit.get("probe_at")),
        },
        "deliveries": counts,
        "parked": int(parked or 0),
        "ordering": {"ordering": subscription.ordering, **lanes.blocked(session, subscription.id)},
        "scheduling": {
            "rate_limit": subscription.rate_limit,
            "max_in_flight": subscription.max_in_flight,
            **(
                scheduling.state(subscription)
                or dict.fromkeys(
                    ("effective_rate_limit", "effective_max_in_flight", "in_flight", "ready")
                )
            ),
        },
    }


def _when(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


def disable_subscription(session: Session, subscription_id: uuid.UUID, reason: str) -> int:
    """Disable a subscription and fail its unfinished deliveries; return how many failed.
    Only the change from active is told (webhook.subscription.disabled): two 410s answered at
    once, or a 410 after a disable, disable it once."""
    changed = affected(
        session.execute(
            update(Subscription)
            .where(
                Subscription.id == subscription_id,
                Subscription.status == SubscriptionStatus.ACTIVE,
            )
            .values(status=SubscriptionStatus.DISABLED, disabled_reason=reason)
        )
    )
    failed = affected(
        session.execute(
            update(Delivery)
            .where(
                Delivery.subscription_id == subscription_id,
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]),
            )
            .values(
                status=DeliveryStatus.FAILED,
                parked=False,
                lease_expires_at=None,
                last_error=f"subscription disabled: {reason}",
            )
        )
    )
    if failed:
        metrics.DELIVERIES.labels(outcome="failed").inc(failed)
    # Nothing more goes to it: its circuit must not count as open any longer.
    get_breaker().reset(str(subscription_id))
    if changed:
        operational.subscription_disabled(session, subscription_id, reason)
    return failed
