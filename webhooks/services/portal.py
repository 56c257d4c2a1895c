"""Portal links: a signed, expiring token that lets one consumer manage its own endpoints.

The token names the tenant and the consumer by ID (a uid may be reused after a deletion; an ID
never is) and its expiry, signed with the pages' key (config.pages). It travels in the portal's
URLs, not in a cookie, so that the portal works inside another site's iframe, where browsers
hold back third-party cookies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.pages import get_page_settings
from webhooks.models import EventType, Subscription
from webhooks.services import NotFound, ServiceError
from webhooks.services import consumers as consumer_service
from webhooks.services import subscriptions as subscription_service
from webhooks.services.queries import DeliveryView, event_types
from webhooks.services.queries import delivery as delivery_view

SALT = "webhooks portal link v1"


class LinkRefused(ServiceError):
    status = 403
    code = "portal_link_refused"


@dataclass(frozen=True)
class Visitor:
    """The consumer a portal link signs in, and until when."""

    tenant_id: uuid.UUID
    consumer_id: uuid.UUID
    uid: str
    name: str
    expires_at: datetime


def _serializer() -> URLSafeSerializer:
    settings = get_page_settings()
    # Signs with the current key; reads links signed with a previous one too (newest last).
    keys = [*settings.previous_session_keys, settings.session_key]
    return URLSafeSerializer(keys, salt=SALT)


def issue_link(session: Session, tenant_id: uuid.UUID, uid: str) -> tuple[str, datetime]:
    """Return a token for the tenant's consumer `uid` and when it expires (404: no consumer)."""
    consumer = consumer_service.get(session, tenant_id, uid)
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(
        seconds=get_page_settings().portal_link_seconds
    )
    token = _serializer().dumps(
        {"t": str(tenant_id), "c": str(consumer.id), "e": int(expires_at.timestamp())}
    )
    return token, expires_at


def open_link(session: Session, token: str, now: datetime | None = None) -> Visitor:
    """Return who the token signs in; LinkRefused if forged, expired or its consumer is gone."""
    try:
        claims = _serializer().loads(token)
        tenant_id, consumer_id = uuid.UUID(claims["t"]), uuid.UUID(claims["c"])
        expires_at = datetime.fromtimestamp(int(claims["e"]), UTC)
    except (BadSignature, KeyError, TypeError, ValueError):
        raise LinkRefused("this portal link is not valid") from None
    if (now or datetime.now(UTC)) >= expires_at:
        raise LinkRefused("this portal link has expired; ask for a new one")
    consumer = consumer_service.by_id(session, tenant_id, consumer_id)
    if consumer is None:
        raise LinkRefused("this portal link is not valid")
    return Visitor(tenant_id, consumer.id, consumer.uid, consumer.name, expires_at)


def endpoints(session: Session, visitor: Visitor) -> list[Subscription]:
    """The consumer's live subscriptions, newest first."""
    return list(
        session.scalars(
            select(Subscription)
            .where(
                subscription_service.live(visitor.tenant_id),
                Subscription.consumer_id == visitor.consumer_id,
            )
            .order_by(Subscription.id.desc())
        )
    )


def endpoint(session: Session, visitor: Visitor, subscription_id: uuid.UUID) -> Subscription:
    """One of the consumer's subscriptions; another consumer's (or the tenant's) is NotFound."""
    found = subscription_service.get(session, visitor.tenant_id, subscription_id)
    if found.consumer_id != visitor.consumer_id:
        raise NotFound("no such endpoint", {"id": str(subscription_id)})
    return found


def delivery(session: Session, visitor: Visitor, delivery_id: uuid.UUID) -> DeliveryView:
    """One of the consumer's deliveries with its attempts; others are NotFound."""
    view = delivery_view(session, visitor.tenant_id, delivery_id)
    if view.subscription.consumer_id != visitor.consumer_id:
        raise NotFound("no such delivery", {"id": str(delivery_id)})
    return view


def catalogue(session: Session, tenant_id: uuid.UUID) -> list[EventType]:
    """The tenant's event types that a consumer may pick (archived ones left out)."""
    return event_types(session, tenant_id, with_archived=False)
