from __future__ import annotations

from typing import Any

from flask import Response

from webhooks.api.common import Blueprint, db, page, tenant
from webhooks.schemas import PageQuery
from webhooks.schemas.common import page_schema
from webhooks.schemas.consumers import ConsumerCreateSchema, ConsumerSchema, ConsumerUpdateSchema
from webhooks.services import consumers as service

bp = Blueprint("consumers", __name__, url_prefix="/v1/consumers", description="Your own customers")


@bp.post("")
@bp.arguments(ConsumerCreateSchema())
@bp.response(201, ConsumerSchema)
@bp.alt_response(409, response="CONFLICT")
def create(data: dict[str, Any]) -> Any:
    """Create a consumer

    A consumer is one of your own customers, named by your `uid` for it. Its subscriptions get
    only the events that name it (`consumer`); 409 if the uid is taken.
    """
    return service.create(db(), tenant(), data)


@bp.get("")
@bp.arguments(PageQuery(), location="query")
@bp.response(200, page_schema(ConsumerSchema))
def list_(args: dict[str, Any]) -> Any:
    """List consumers"""
    return page(service.list_(db(), tenant(), args["limit"], args["cursor"]))


@bp.get("/<uid>")
@bp.response(200, ConsumerSchema)
def get(uid: str) -> Any:
    """Get a consumer"""
    return service.get(db(), tenant(), uid)


@bp.patch("/<uid>")
@bp.arguments(ConsumerUpdateSchema(partial=True))
@bp.response(200, ConsumerSchema)
def patch(data: dict[str, Any], uid: str) -> Any:
    """Change a consumer

    Only the given fields change; the uid stays.
    """
    return service.update(db(), tenant(), uid, data)


@bp.delete("/<uid>")
@bp.response(204)
def delete(uid: str) -> Any:
    """Delete a consumer and its subscriptions

    Each of its subscriptions is deleted as DELETE /v1/subscriptions/{id} would: unfinished
    deliveries end as failed, history stays readable. Its uid may be used again.
    """
    service.delete(db(), tenant(), uid)
    return Response(status=204)
