"""Create, change, delete and inspect subscriptions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config import get_settings
from webhooks.crypto import decrypt_secret, encrypt_secret
from webhooks.db import uuid7
from webhooks.http import AddressRefused, check_url
from webhooks.models import Consumer, Delivery, DeliveryStatus, Subscription
from webhooks.models.subscription import SubscriptionStatus
from webhooks.services import Invalid, NotFound, consumers, event_types, filters
from webhooks.services.delivery import disable_subscription, get_breaker
from webhooks.signing import generate_secret


def _check_target(url: str) -> None:
    try:
        check_url(url, get_settings().allow_private_targets)
    except AddressRefused as exc:
        raise Invalid(f"url is refused: {exc}", {"fields": {"url": [str(exc)]}}) from None


def _consumer(session: Session, tenant_id: uuid.UUID, uid: str | None) -> Consumer | None:
    """Return the live consumer a body names by uid (None for the tenant's own), or 422."""
    if uid is None:
        return None
    try:
        return consumers.get(session, tenant_id, uid)
    except NotFound:
        raise Invalid("no such consumer", {"fields": {"consumer": ["no such consumer"]}}) from None


def get(session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> Subscription:
    """Return one of the tenant's live subscriptions, or raise NotFound."""
    found = session.scalar(
        select(Subscription).where(
            Subscription.id == subscription_id,
            Subscription.tenant_id == tenant_id,
            Subscription.deleted_at.is_(None),
        )
    )
    if found is None:
        raise NotFound("no such subscription", {"id": str(subscription_id)})
    return found


def create(
    session: Session, tenant_id: uuid.UUID, data: dict[str, Any]
) -> tuple[Subscription, str]:
    """Create a subscription; return it with its new signing secret (shown only now)."""
    _check_target(data["url"])
    event_types.check_subscribable(session, tenant_id, data["event_types"])
    consumer = _consumer(session, tenant_id, data.get("consumer"))
    secret = generate_secret()
    subscription = Subscription(
        id=uuid7(),
        tenant_id=tenant_id,
        url=data["url"],
        event_types=sorted(set(data["event_types"])),
        description=data.get("description"),
        headers=data.get("headers") or {},
        status=SubscriptionStatus.ACTIVE,
        consumer=consumer,
        channels=sorted(set(data.get("channels") or [])),
    )
    _set_filter(subscription, data.get("filter"))
    subscription.secret_ciphertext = encrypt_secret(secret, str(subscription.id).encode())
    session.add(subscription)
    session.commit()
    return subscription, secret


def update_one(
    session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID, data: dict[str, Any]
) -> Subscription:
    """Change the given fields; re-enabling a subscription closes its circuit."""
    subscription = get(session, tenant_id, subscription_id)
    if "url" in data:
        _check_target(data["url"])
        subscription.url = data["url"]
    if "event_types" in data:
        event_types.check_subscribable(session, tenant_id, data["event_types"])
        subscription.event_types = sorted(set(data["event_types"]))
    if "description" in data:
        subscription.description = data["description"]
    if "headers" in data:
        subscription.headers = data["headers"] or {}
    if "consumer" in data:
        subscription.consumer = _consumer(session, tenant_id, data["consumer"])
    if "channels" in data:
        subscription.channels = sorted(set(data["channels"] or []))
    if "filter" in data:
        _set_filter(subscription, data["filter"])
    status = data.get("status")
    if status == "active" and subscription.status != SubscriptionStatus.ACTIVE:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.disabled_reason = None
        get_breaker().reset(str(subscription.id))
    elif status == "disabled" and subscription.status != SubscriptionStatus.DISABLED:
        disable_subscription(session, subscription.id, "disabled through the API")
        session.refresh(subscription)
    session.commit()
    return subscription


def delete(session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
    """Delete a subscription; its unfinished deliveries end as failed, its history stays."""
    remove(session, get(session, tenant_id, subscription_id))
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
    cursor: uuid.UUID | None = None,
    consumer: str | None = None,
) -> list[Subscription]:
    """Return up to `limit` + 1 live subscriptions, newest first, after `cursor`; only those
    of the consumer with this uid when one is given."""
    query = select(Subscription).where(
        Subscription.tenant_id == tenant_id, Subscription.deleted_at.is_(None)
    )
    if consumer is not None:
        query = query.where(Subscription.consumer_id.in_(consumers.ids_of(tenant_id, consumer)))
    if cursor is not None:
        query = query.where(Subscription.id < cursor)
    return list(session.scalars(query.order_by(Subscription.id.desc()).limit(limit + 1)))


def _set_filter(subscription: Subscription, document: dict[str, Any] | None) -> None:
    """Keep the filter as given and compiled to the jsonpath predicate that ingest matches."""
    subscription.filter = document or None
    subscription.filter_path = filters.compile_filter(document) if document else None


def rotate_secret(
    session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID
) -> tuple[Subscription, str]:
    """Make a new secret; the old one keeps signing too until the grace period ends."""
    subscription = get(session, tenant_id, subscription_id)
    associated = str(subscription.id).encode()
    secret = generate_secret()
    subscription.previous_secret_ciphertext = subscription.secret_ciphertext
    subscription.previous_secret_expires_at = datetime.now(UTC) + timedelta(
        seconds=get_settings().rotation_grace
    )
    subscription.secret_ciphertext = encrypt_secret(secret, associated)
    session.commit()
    return subscription, secret


def current_secret(subscription: Subscription) -> str:
    return decrypt_secret(subscription.secret_ciphertext, str(subscription.id).encode())


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
            "consecutive_failures": circuit["consecutive_failures"],
            "opened_at": _when(circuit["opened_at"]),
            "probe_at": _when(circuit["probe_at"]),
        },
        "deliveries": counts,
        "parked": int(parked or 0),
    }


def _when(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None
