from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Blueprint, request
from sqlalchemy import select

from config import get_settings
from webhooks import ratelimit
from webhooks.api.common import ApiError, db, load, read_json, require_tenant
from webhooks.models import Delivery, Event
from webhooks.schemas import EventCreateSchema, EventDetailSchema, EventSchema
from webhooks.schemas.deliveries import NESTED_LIMIT
from webhooks.schemas.events import EventBatchCreateSchema
from webhooks.services import NotFound, ingest

bp = Blueprint("events", __name__, url_prefix="/v1/events")

create_schema = EventCreateSchema()
batch_schema = EventBatchCreateSchema()
event_schema = EventSchema()
detail_schema = EventDetailSchema()
MAX_IDEMPOTENCY_KEY = 255
# A batch body may be as large as one event may be, and at least 1 MiB, which is also the app's
# backstop for bodies (create_app); each event in it is still held to the single-event limit.
MIN_BATCH_BODY = 1 << 20


def batch_body_limit() -> int:
    """Return the largest accepted batch body in bytes."""
    return max(get_settings().max_payload_bytes, MIN_BATCH_BODY)


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
    body, _ = read_json(get_settings().max_payload_bytes)
    data = load(create_schema, body)
    accepted = ingest.publish_event(
        db(),
        tenant_id,
        data["event_type"],
        data["payload"],
        idempotency_key=key,
        body_hash=(
            ingest.request_hash(
                data["event_type"],
                data["payload"],
                data["consumer"],
                data["channels"],
                data["ordering_key"],
            )
            if key is not None
            else None
        ),
        consumer=data["consumer"],
        channels=data["channels"],
        ordering_key=data["ordering_key"],
    )
    out = event_schema.dump(accepted.event)
    out["deliveries"] = accepted.deliveries
    headers = {} if accepted.created else {"Idempotent-Replayed": "true"}
    return out, 202, headers


@bp.post("/batch")
def publish_batch() -> Any:
    tenant_id = require_tenant()
    body, raw = read_json(batch_body_limit())
    data = load(batch_schema, body)
    limit = get_settings().max_payload_bytes
    items = []
    for index, event in enumerate(data["events"]):
        if len(raw) > limit:
            # Only a body over the limit can hold an event over it: measure each one then.
            size = len(json.dumps(body["events"][index], separators=(",", ":")).encode())
            if size > limit:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"events[{index}] is larger than {limit} bytes",
                    {"index": index, "limit": limit},
                )
        key = event.get("idempotency_key")
        items.append(
            ingest.NewEvent(
                event["event_type"],
                event["payload"],
                key,
                ingest.request_hash(
                    event["event_type"],
                    event["payload"],
                    event["consumer"],
                    event["channels"],
                    event["ordering_key"],
                )
                if key
                else None,
                event["consumer"],
                event["channels"],
                event["ordering_key"],
            )
        )
    ratelimit.charge(len(items) - 1)  # a batch costs one per event; the request paid one
    accepted = ingest.publish_batch(db(), tenant_id, items)
    # Built by hand, not by BatchAcceptedSchema (which describes it in the OpenAPI): dumping
    # 500 items through marshmallow was a tenth of the request.
    out = [
        {
            "id": str(result.event.id),
            "event_type": result.event.event_type,
            "idempotency_key": result.event.idempotency_key,
            "consumer": result.event.consumer_uid,
            "channels": result.event.channels,
            "ordering_key": result.event.ordering_key,
            "created_at": result.event.created_at.isoformat(),
            "deliveries": result.deliveries,
            "replayed": not result.created,
        }
        for result in accepted
    ]
    return {
        "data": out,
        "created": sum(1 for r in accepted if r.created),
        "replayed": sum(1 for r in accepted if not r.created),
        "deliveries": sum(r.deliveries for r in accepted if r.created),
    }, 202


@bp.get("/<uuid:event_id>")
def get(event_id: uuid.UUID) -> Any:
    tenant_id = require_tenant()
    session = db()
    event = session.scalar(select(Event).where(Event.id == event_id, Event.tenant_id == tenant_id))
    if event is None:
        raise NotFound("no such event", {"id": str(event_id)})
    deliveries = session.scalars(
        select(Delivery)
        .where(Delivery.event_id == event.id)
        .order_by(Delivery.id)
        .limit(NESTED_LIMIT + 1)
    ).all()
    out = detail_schema.dump(event)
    shown = deliveries[:NESTED_LIMIT]
    out["deliveries"] = detail_schema.fields["deliveries"].serialize("d", {"d": shown})
    out["more_deliveries"] = len(deliveries) > NESTED_LIMIT
    out["deliveries_url"] = f"/v1/deliveries?event_id={event.id}"
    return out
