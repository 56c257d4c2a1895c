from __future__ import annotations

import uuid
from typing import Any

from flask import Response

from webhooks import ratelimit
from webhooks.api.common import Blueprint, Detail, db, page, tenant
from webhooks.models import Subscription
from webhooks.schemas import subscriptions as schemas
from webhooks.schemas.common import page_schema
from webhooks.schemas.stats import StatsQuery, SubscriptionStatsSchema
from webhooks.services import recovery
from webhooks.services import stats as stats_service
from webhooks.services import subscriptions as service

bp = Blueprint(
    "subscriptions",
    __name__,
    url_prefix="/v1/subscriptions",
    description="Endpoints that receive the events",
)

subscription_schema = schemas.SubscriptionSchema()
with_secret_schema = schemas.SubscriptionWithSecretSchema()


def _with_secret(subscription: Subscription, secret: str | None) -> dict[str, Any]:
    return with_secret_schema.dump(Detail(subscription, secret=secret))


@bp.post("")
@bp.arguments(schemas.SubscriptionCreateSchema())
@bp.response(201, schemas.SubscriptionWithSecretSchema)
def create(data: dict[str, Any]) -> Any:
    """Create a subscription

    The answer holds the signing secret; no other answer shows it again. The URL must be
    http(s) and resolve only to public addresses. With `consumer`, it gets only events that
    name that consumer; without, only events that name none.
    """
    subscription, secret = service.create(db(), tenant(), data)
    return Detail(subscription, secret=secret)


@bp.get("")
@bp.arguments(schemas.SubscriptionListQuery(), location="query")
@bp.response(200, page_schema(schemas.SubscriptionSchema))
def list_(args: dict[str, Any]) -> Any:
    """List subscriptions"""
    return page(service.list_(db(), tenant(), args["limit"], args["cursor"], args["consumer"]))


@bp.get("/<uuid:subscription_id>")
@bp.response(200, schemas.SubscriptionSchema)
def get(subscription_id: uuid.UUID) -> Any:
    """Get a subscription"""
    return service.get(db(), tenant(), subscription_id)


@bp.patch("/<uuid:subscription_id>")
@bp.arguments(schemas.SubscriptionUpdateSchema(partial=True))
@bp.alt_response(200, schema=schemas.SubscriptionWithSecretSchema, success=True)
def patch(data: dict[str, Any], subscription_id: uuid.UUID) -> Any:
    """Change a subscription

    Only the given fields change. `status: active` re-enables a disabled subscription and
    closes its circuit. A new `signature_scheme` is new key material, made as rotate-secret
    makes it: the answer then holds the new `secret` (an HMAC one); otherwise `secret` is null.
    """
    tenant_id = tenant()
    scheme = data.pop("signature_scheme", None)
    subscription = service.update_one(db(), tenant_id, subscription_id, data)
    if scheme is not None and scheme != subscription.signature_scheme:
        # A new scheme is new key material, made as rotate-secret makes it (the old key keeps
        # signing during the grace period); the answer holds the new secret as rotation's does.
        subscription, secret = service.rotate_secret(db(), tenant_id, subscription_id, scheme)
        return _with_secret(subscription, secret)
    return _with_secret(subscription, None)


@bp.delete("/<uuid:subscription_id>")
@bp.response(204)
def delete(subscription_id: uuid.UUID) -> Any:
    """Delete a subscription

    Its unfinished deliveries end as failed; its history stays readable.
    """
    service.delete(db(), tenant(), subscription_id)
    return Response(status=204)


@bp.post("/<uuid:subscription_id>/rotate-secret")
@bp.response(200, schemas.SubscriptionWithSecretSchema)
def rotate_secret(subscription_id: uuid.UUID) -> Any:
    """Rotate the signing secret

    The new secret signs at once; the old one keeps signing too (a second signature) for
    WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS.
    """
    subscription, secret = service.rotate_secret(db(), tenant(), subscription_id)
    return Detail(subscription, secret=secret)


@bp.get("/<uuid:subscription_id>/health")
@bp.response(200, schemas.SubscriptionHealthSchema)
def health(subscription_id: uuid.UUID) -> Any:
    """Circuit state and delivery counts"""
    return service.health(db(), tenant(), subscription_id)


@bp.post("/<uuid:subscription_id>/replay")
@bp.arguments(schemas.ReplaySchema())
@bp.response(202, schemas.ReplayResultSchema)
@bp.alt_response(409, response="CONFLICT")
def replay(data: dict[str, Any], subscription_id: uuid.UUID) -> Any:
    """Replay finished deliveries

    Sends again the delivered or failed deliveries created in [since, until).
    """
    # A replay costs one per delivery it requeues: it requeues no more than the tenant's budget
    # left (the request itself paid for the first), and says `more` for the rest.
    left = ratelimit.budget()
    count, more = recovery.replay(
        db(),
        tenant(),
        subscription_id,
        data["since"],
        data["until"],
        data["status"],
        None if left is None else min(recovery.REPLAY_LIMIT, left + 1),
    )
    ratelimit.charge(count - 1, force=True)
    return {"requeued": count, "more": more}, 202


@bp.get("/<uuid:subscription_id>/stats")
@bp.arguments(StatsQuery(), location="query")
@bp.response(200, SubscriptionStatsSchema)
def stats(args: dict[str, Any], subscription_id: uuid.UUID) -> Any:
    """Attempt statistics over a window

    Attempts made in the last `window` (1h, 24h or 7d; default 24h) by result, the success
    rate, and the median and 95th percentile attempt duration. Read from one range of the index
    on attempts (subscription_id, created_at).
    """
    return stats_service.subscription_stats(db(), tenant(), subscription_id, args["window"])
