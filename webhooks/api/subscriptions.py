from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint

from webhooks import ratelimit
from webhooks.api.common import db, load, load_query, page, read_json, require_tenant
from webhooks.models import Subscription
from webhooks.schemas import (
    ReplaySchema,
    SubscriptionCreateSchema,
    SubscriptionHealthSchema,
    SubscriptionSchema,
    SubscriptionUpdateSchema,
    SubscriptionWithSecretSchema,
)
from webhooks.schemas.stats import StatsQuery, SubscriptionStatsSchema
from webhooks.schemas.subscriptions import SubscriptionListQuery
from webhooks.services import recovery
from webhooks.services import stats as stats_service
from webhooks.services import subscriptions as service

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")

create_schema = SubscriptionCreateSchema()
update_schema = SubscriptionUpdateSchema()
replay_schema = ReplaySchema()
list_query = SubscriptionListQuery()
subscription_schema = SubscriptionSchema()
with_secret_schema = SubscriptionWithSecretSchema()
health_schema = SubscriptionHealthSchema()
stats_query = StatsQuery()
stats_schema = SubscriptionStatsSchema()


def _with_secret(subscription: Subscription, secret: str | None) -> dict[str, Any]:
    out = with_secret_schema.dump(subscription)
    out["secret"] = secret
    return out


@bp.post("")
def create() -> Any:
    tenant_id = require_tenant()
    data = load(create_schema, read_json()[0])
    subscription, secret = service.create(db(), tenant_id, data)
    return _with_secret(subscription, secret), 201


@bp.get("")
def list_() -> Any:
    tenant_id = require_tenant()
    args = load_query(list_query)
    items = service.list_(db(), tenant_id, args["limit"], args["cursor"], args["consumer"])
    return page(items, args["limit"], subscription_schema)


@bp.get("/<uuid:subscription_id>")
def get(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    return subscription_schema.dump(service.get(db(), tenant_id, subscription_id))


@bp.patch("/<uuid:subscription_id>")
def patch(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    data = load(update_schema, read_json()[0], partial=True)
    scheme = data.pop("signature_scheme", None)
    subscription = service.update_one(db(), tenant_id, subscription_id, data)
    if scheme is not None and scheme != subscription.signature_scheme:
        # A new scheme is new key material, made as rotate-secret makes it (the old key keeps
        # signing during the grace period); the answer holds the new secret as rotation's does.
        subscription, secret = service.rotate_secret(db(), tenant_id, subscription_id, scheme)
        return _with_secret(subscription, secret)
    return subscription_schema.dump(subscription)


@bp.delete("/<uuid:subscription_id>")
def delete(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    service.delete(db(), tenant_id, subscription_id)
    return "", 204


@bp.post("/<uuid:subscription_id>/rotate-secret")
def rotate_secret(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    subscription, secret = service.rotate_secret(db(), tenant_id, subscription_id)
    return _with_secret(subscription, secret)


@bp.get("/<uuid:subscription_id>/health")
def health(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    return health_schema.dump(service.health(db(), tenant_id, subscription_id))


@bp.post("/<uuid:subscription_id>/replay")
def replay(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    data = load(replay_schema, read_json()[0])
    # A replay costs one per delivery it requeues: it requeues no more than the tenant's budget
    # left (the request itself paid for the first), and says `more` for the rest.
    left = ratelimit.budget()
    count, more = recovery.replay(
        db(),
        tenant_id,
        subscription_id,
        data["since"],
        data["until"],
        data["status"],
        None if left is None else min(recovery.REPLAY_LIMIT, left + 1),
    )
    ratelimit.charge(count - 1, force=True)
    return {"requeued": count, "more": more}, 202


@bp.get("/<uuid:subscription_id>/stats")
def stats(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    args = load_query(stats_query)
    return stats_schema.dump(
        stats_service.subscription_stats(db(), tenant_id, subscription_id, args["window"])
    )
