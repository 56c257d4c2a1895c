from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint

from webhooks import ratelimit
from webhooks.api.common import db, load, load_query, page, read_json, require_tenant
from webhooks.models import Subscription
from webhooks.schemas import (
    PageQuery,
    ReplaySchema,
    SubscriptionCreateSchema,
    SubscriptionHealthSchema,
    SubscriptionSchema,
    SubscriptionUpdateSchema,
    SubscriptionWithSecretSchema,
)
from webhooks.services import recovery
from webhooks.services import subscriptions as service

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")

create_schema = SubscriptionCreateSchema()
update_schema = SubscriptionUpdateSchema()
replay_schema = ReplaySchema()
page_query = PageQuery()
subscription_schema = SubscriptionSchema()
with_secret_schema = SubscriptionWithSecretSchema()
health_schema = SubscriptionHealthSchema()


def _with_secret(subscription: Subscription, secret: str) -> dict[str, Any]:
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
    args = load_query(page_query)
    from sqlalchemy import select

    query = select(Subscription).where(
        Subscription.tenant_id == tenant_id, Subscription.deleted_at.is_(None)
    )
    if args["cursor"] is not None:
        query = query.where(Subscription.id < args["cursor"])
    items = list(db().scalars(query.order_by(Subscription.id.desc()).limit(args["limit"] + 1)))
    return page(items, args["limit"], subscription_schema)


@bp.get("/<uuid:subscription_id>")
def get(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    return subscription_schema.dump(service.get(db(), tenant_id, subscription_id))


@bp.patch("/<uuid:subscription_id>")
def patch(subscription_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    data = load(update_schema, read_json()[0], partial=True)
    return subscription_schema.dump(service.update_one(db(), tenant_id, subscription_id, data))


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
