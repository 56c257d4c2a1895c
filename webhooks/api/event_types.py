from __future__ import annotations

from typing import Any

from webhooks.api.common import Blueprint, db, page, tenant
from webhooks.schemas import PageQuery
from webhooks.schemas.common import page_schema
from webhooks.schemas.event_types import (
    EventTypeCreateSchema,
    EventTypeSchema,
    EventTypeUpdateSchema,
)
from webhooks.services import event_types as service

bp = Blueprint(
    "event_types", __name__, url_prefix="/v1/event-types", description="The event catalogue"
)


@bp.post("")
@bp.arguments(EventTypeCreateSchema())
@bp.response(201, EventTypeSchema)
@bp.alt_response(409, response="CONFLICT")
def create(data: dict[str, Any]) -> Any:
    """Add an event type to the catalogue

    Events of a type with a `schema` (JSON Schema 2020-12) are checked at ingest: a payload
    that does not match is a 422 naming its JSON pointer, and nothing is stored. With
    WEBHOOKS_STRICT_EVENT_TYPES=true, events and subscriptions must name a known, unarchived
    type. `webhook.` names are the service's own.
    """
    return service.create(db(), tenant(), data)


@bp.get("")
@bp.arguments(PageQuery(), location="query")
@bp.response(200, page_schema(EventTypeSchema))
def list_(args: dict[str, Any]) -> Any:
    """List the event-type catalogue"""
    return page(service.list_(db(), tenant(), args["limit"], args["cursor"]))


@bp.get("/<name>")
@bp.response(200, EventTypeSchema)
def get(name: str) -> Any:
    """Get an event type"""
    return service.get(db(), tenant(), name)


@bp.patch("/<name>")
@bp.arguments(EventTypeUpdateSchema(partial=True))
@bp.response(200, EventTypeSchema)
def patch(data: dict[str, Any], name: str) -> Any:
    """Change an event type

    Only the given fields change; `schema: null` removes the schema. Archived types stay
    readable and, unless types are strict, publishable.
    """
    return service.update(db(), tenant(), name, data)
