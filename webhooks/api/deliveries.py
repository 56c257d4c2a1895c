from __future__ import annotations

import uuid
from typing import Any

from webhooks.api.common import ApiError, Blueprint, Detail, db, page, tenant
from webhooks.schemas import DeliveryDetailSchema, DeliveryListQuery, DeliverySchema, PageQuery
from webhooks.schemas.common import page_schema
from webhooks.schemas.deliveries import NESTED_LIMIT, AttemptSchema
from webhooks.services import queries, recovery
from webhooks.services.paging import bigint

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries", description="Follow deliveries")


@bp.get("")
@bp.arguments(DeliveryListQuery(), location="query")
@bp.response(200, page_schema(DeliverySchema))
def list_(args: dict[str, Any]) -> Any:
    """List deliveries"""
    where = queries.DeliveryFilter(
        status=args["status"],
        subscription_id=args["subscription_id"],
        event_id=args["event_id"],
        consumer_uid=args["consumer"],
    )
    found = queries.deliveries(db(), tenant(), where, args["cursor"], args["limit"])
    found.items = [row.Delivery for row in found.items]
    return page(found)


@bp.get("/<uuid:delivery_id>")
@bp.response(200, DeliveryDetailSchema)
def get(delivery_id: uuid.UUID) -> Any:
    """Get a delivery and its attempts"""
    session = db()
    delivery = queries.find_delivery(session, tenant(), delivery_id)
    attempts = queries.delivery_attempts(session, delivery, None, NESTED_LIMIT)
    return Detail(
        delivery,
        attempts=attempts.items,
        more_attempts=attempts.next_key is not None,
        attempts_url=f"/v1/deliveries/{delivery.id}/attempts",
    )


@bp.get("/<uuid:delivery_id>/attempts")
@bp.arguments(PageQuery(), location="query")
@bp.response(200, page_schema(AttemptSchema))
def attempts_(args: dict[str, Any], delivery_id: uuid.UUID) -> Any:
    """List a delivery's attempts, oldest first

    Every attempt; the delivery's own answer holds the first 100 only.
    """
    session = db()
    delivery = queries.find_delivery(session, tenant(), delivery_id)
    after = None
    if args["cursor"] is not None:
        # The cursor holds the last attempt's ID (a bigint) in a UUID's 128 bits.
        try:
            after = bigint(str(args["cursor"].int))
        except ValueError:
            raise ApiError(
                422,
                "validation_error",
                "some query parameters are invalid",
                {"fields": {"cursor": ["not a cursor returned by this API"]}},
            ) from None
    found = queries.delivery_attempts(session, delivery, after, args["limit"])
    return page(found, key=lambda last: uuid.UUID(int=last))


@bp.post("/<uuid:delivery_id>/retry")
@bp.response(202, DeliverySchema)
@bp.alt_response(409, response="CONFLICT")
def retry(delivery_id: uuid.UUID) -> Any:
    """Retry a finished delivery

    Gives a delivered or failed delivery a fresh set of attempts, same webhook-id. 409 while
    it is still in progress or its subscription is disabled.
    """
    return recovery.retry(db(), tenant(), delivery_id)
