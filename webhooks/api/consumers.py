from __future__ import annotations

from typing import Any

from flask import Blueprint

from webhooks.api.common import db, load, load_query, page, read_json, require_tenant
from webhooks.schemas import PageQuery
from webhooks.schemas.consumers import ConsumerCreateSchema, ConsumerSchema, ConsumerUpdateSchema
from webhooks.services import consumers as service

bp = Blueprint("consumers", __name__, url_prefix="/v1/consumers")

create_schema = ConsumerCreateSchema()
update_schema = ConsumerUpdateSchema()
page_query = PageQuery()
consumer_schema = ConsumerSchema()


@bp.post("")
def create() -> Any:
    tenant_id = require_tenant()
    data = load(create_schema, read_json()[0])
    return consumer_schema.dump(service.create(db(), tenant_id, data)), 201


@bp.get("")
def list_() -> Any:
    tenant_id = require_tenant()
    args = load_query(page_query)
    items = service.list_(db(), tenant_id, args["limit"], args["cursor"])
    return page(items, args["limit"], consumer_schema)


@bp.get("/<uid>")
def get(uid: str) -> Any:
    tenant_id = require_tenant()
    return consumer_schema.dump(service.get(db(), tenant_id, uid))


@bp.patch("/<uid>")
def patch(uid: str) -> Any:
    tenant_id = require_tenant()
    data = load(update_schema, read_json()[0], partial=True)
    return consumer_schema.dump(service.update(db(), tenant_id, uid, data))


@bp.delete("/<uid>")
def delete(uid: str) -> Any:
    tenant_id = require_tenant()
    service.delete(db(), tenant_id, uid)
    return "", 204
