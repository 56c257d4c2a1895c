from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint
from sqlalchemy import select

from webhooks.api.common import db, load_query, page, require_tenant
from webhooks.models import Attempt, Delivery
from webhooks.schemas import DeliveryDetailSchema, DeliveryListQuery, DeliverySchema
from webhooks.services import NotFound, consumers, recovery

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries")

list_query = DeliveryListQuery()
delivery_schema = DeliverySchema()
detail_schema = DeliveryDetailSchema()


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
        select(Attempt).where(Attempt.delivery_id == delivery.id).order_by(Attempt.number)
    ).all()
    out = detail_schema.dump(delivery)
    out["attempts"] = detail_schema.fields["attempts"].serialize("a", {"a": attempts})
    return out


@bp.post("/<uuid:delivery_id>/retry")
def retry(delivery_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    delivery = recovery.retry(db(), tenant_id, delivery_id)
    return delivery_schema.dump(delivery), 202
