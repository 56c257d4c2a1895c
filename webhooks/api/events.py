from __future__ import annotations

import hashlib
import uuid
from typing import Any

from flask import Blueprint, request
from sqlalchemy import select

from config import get_settings
from webhooks.api.common import ApiError, db, load, read_json, require_tenant
from webhooks.models import Delivery, Event
from webhooks.schemas import EventCreateSchema, EventDetailSchema, EventSchema
from webhooks.services import NotFound, ingest

bp = Blueprint("events", __name__, url_prefix="/v1/events")

create_schema = EventCreateSchema()
event_schema = EventSchema()
detail_schema = EventDetailSchema()
MAX_IDEMPOTENCY_KEY = 255


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            422,
            "validation_error",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
            {"fields": {"Idempotency-Key": ["invalid"]}},
        )
    return key


@bp.post("")
def publish() -> Any:
    tenant_id = require_tenant()
    key = _idempotency_key()
    body, raw = read_json(get_settings().max_payload_bytes)
    data = load(create_schema, body)
    accepted = ingest.publish_event(
        db(),
        tenant_id,
        data["event_type"],
        data["payload"],
        idempotency_key=key,
        body_hash=hashlib.sha256(raw).digest() if key is not None else None,
    )
    out = event_schema.dump(accepted.event)
    out["deliveries"] = accepted.deliveries
    headers = {} if accepted.created else {"Idempotent-Replayed": "true"}
    return out, 202, headers


@bp.get("/<uuid:event_id>")
def get(event_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    session = db()
    event = session.scalar(select(Event).where(Event.id == event_id, Event.tenant_id == tenant_id))
    if event is None:
        raise NotFound("no such event", {"id": str(event_id)})
    deliveries = session.scalars(
        select(Delivery).where(Delivery.event_id == event.id).order_by(Delivery.id)
    ).all()
    out = detail_schema.dump(event)
    out["deliveries"] = detail_schema.fields["deliveries"].serialize("d", {"d": deliveries})
    return out
