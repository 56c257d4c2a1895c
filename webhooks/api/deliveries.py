from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint
from sqlalchemy import select

from webhooks.api.common import ApiError, db, load_query, page, require_tenant
from webhooks.models import Attempt, Delivery
from webhooks.schemas import (
    AttemptSchema,
    DeliveryDetailSchema,
    DeliveryListQuery,
    DeliverySchema,
    PageQuery,
    encode_cursor,
)
from webhooks.schemas.deliveries import NESTED_LIMIT
from webhooks.services import NotFound, consumers, recovery

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries")

list_query = DeliveryListQuery()
delivery_schema = DeliverySchema()
detail_schema = DeliveryDetailSchema()
attempt_schema = AttemptSchema()
page_query = PageQuery()


@bp.get("")
def list_() -> Any:
    tenant_id = require_tenant()
    args = load_query(list_query)
    query = select(Delivery).where(Delivery.tenant_id == tenant_id)
    if args["status"]:
        query = query.where(Delivery.status == args["status"])
    if args["subscription_id"]:
        query = query.where(Delivery.subscription_id == args["subscription_id"])
    if args["event_id"]:
        query = query.where(Delivery.event_id == args["event_id"])
    if args["consumer"]:
        query = query.where(
            Delivery.subscription_id.in_(consumers.subscription_ids(tenant_id, args["consumer"]))
        )
    if args["cursor"] is not None:
        query = query.where(Delivery.id < args["cursor"])
    items = list(db().scalars(query.order_by(Delivery.id.desc()).limit(args["limit"] + 1)))
    return page(items, args["limit"], delivery_schema)


@bp.get("/<uuid:delivery_id>")
def get(delivery_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    session = db()
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.tenant_id == tenant_id)
    )
    if delivery is None:
        raise NotFound("no such delivery", {"id": str(delivery_id)})
    attempts = session.scalars(
        select(Attempt)
        .where(Attempt.delivery_id == delivery.id)
        .order_by(Attempt.id)
        .limit(NESTED_LIMIT + 1)
    ).all()
    out = detail_schema.dump(delivery)
    shown = attempts[:NESTED_LIMIT]
    out["attempts"] = detail_schema.fields["attempts"].serialize("a", {"a": shown})
    out["more_attempts"] = len(attempts) > NESTED_LIMIT
    out["attempts_url"] = f"/v1/deliveries/{delivery.id}/attempts"
    return out


@bp.get("/<uuid:delivery_id>/attempts")
def attempts_(delivery_id: uuid.UUID) -> Any:
    """All attempts of a delivery, oldest first, a page at a time."""
    tenant_id = require_tenant()
    args = load_query(page_query)
    session = db()
    found = session.scalar(
        select(Delivery.id).where(Delivery.id == delivery_id, Delivery.tenant_id == tenant_id)
    )
    if found is None:
        raise NotFound("no such delivery", {"id": str(delivery_id)})
    query = select(Attempt).where(Attempt.delivery_id == found)
    if args["cursor"] is not None:
        # The cursor holds the last attempt's ID (a bigint) in a UUID's 128 bits.
        after = args["cursor"].int
        if after >= 1 << 63:
            raise ApiError(
                422,
                "validation_error",
                "some query parameters are invalid",
                {"fields": {"cursor": ["not a cursor returned by this API"]}},
            )
        query = query.where(Attempt.id > after)
    items = list(session.scalars(query.order_by(Attempt.id).limit(args["limit"] + 1)))
    more = len(items) > args["limit"]
    items = items[: args["limit"]]
    return {
        "data": attempt_schema.dump(items, many=True),
        "next_cursor": encode_cursor(uuid.UUID(int=items[-1].id)) if more and items else None,
    }


@bp.post("/<uuid:delivery_id>/retry")
def retry(delivery_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    delivery = recovery.retry(db(), tenant_id, delivery_id)
    return delivery_schema.dump(delivery), 202
