from __future__ import annotations

from typing import Any

from flask import Blueprint

from webhooks.api.common import db, load, load_query, page, read_json, require_tenant
from webhooks.schemas import PageQuery
from webhooks.schemas.event_types import (
    EventTypeCreateSchema,
    EventTypeSchema,
    EventTypeUpdateSchema,
)
from webhooks.services import event_types as service

bp = Blueprint("event_types", __name__, url_prefix="/v1/event-types")

create_schema = EventTypeCreateSchema()
update_schema = EventTypeUpdateSchema()
page_query = PageQuery()
event_type_schema = EventTypeSchema()


@bp.post("")
def create() -> Any:
    tenant_id = require_tenant()
    data = load(create_schema, read_json()[0])
    return event_type_schema.dump(service.create(db(), tenant_id, data)), 201


@bp.get("")
def list_() -> Any:
    tenant_id = require_tenant()
    args = load_query(page_query)
    items = service.list_(db(), tenant_id, args["limit"], args["cursor"])
    return page(items, args["limit"], event_type_schema)


@bp.get("/<name>")
def get(name: str) -> Any:
    tenant_id = require_tenant()
    return event_type_schema.dump(service.get(db(), tenant_id, name))


@bp.patch("/<name>")
def patch(name: str) -> Any:
    tenant_id = require_tenant()
    data = load(update_schema, read_json()[0], partial=True)
    return event_type_schema.dump(service.update(db(), tenant_id, name, data))
