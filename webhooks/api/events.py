from __future__ import annotations

import json
import uuid
from typing import Any

from flask import g, request

from config import get_settings
from webhooks import ratelimit
from webhooks.api.common import ApiError, Blueprint, Detail, body_limit, db, tenant
from webhooks.schemas import EventCreateSchema, EventDetailSchema, EventSchema
from webhooks.schemas.deliveries import NESTED_LIMIT
from webhooks.schemas.events import (
    MAX_IDEMPOTENCY_KEY,
    EventBatchCreateSchema,
    EventBatchResultSchema,
)
from webhooks.services import ingest, queries

bp = Blueprint("events", __name__, url_prefix="/v1/events", description="Publish events")

event_schema = EventSchema()
# A batch body may be as large as one event may be, and at least 1 MiB, which is also the app's
# backstop for bodies (create_app); each event in it is still held to the single-event limit.
MIN_BATCH_BODY = 1 << 20

IDEMPOTENCY_KEY = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "description": "Send the same key again to get the first answer instead of a new event "
    "(409 if the body differs).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when the answer is that of an earlier request with the same "
        "Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


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
@body_limit(lambda: get_settings().max_payload_bytes)
@bp.arguments(EventCreateSchema())
@bp.alt_response(202, schema=EventSchema, headers=REPLAYED, success=True)
@bp.alt_response(409, response="CONFLICT")
@bp.doc(parameters=[IDEMPOTENCY_KEY])
def publish(data: dict[str, Any]) -> Any:
    """Publish an event"""
    # Answered by hand, as the batch is: the leanest path for the hottest endpoint.
    key = _idempotency_key()
    accepted = ingest.publish_event(
        db(),
        tenant(),
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
@body_limit(batch_body_limit)
@bp.arguments(EventBatchCreateSchema())
@bp.alt_response(202, schema=EventBatchResultSchema, success=True)
@bp.alt_response(409, response="CONFLICT")
def publish_batch(data: dict[str, Any]) -> Any:
    """Publish up to 500 events at once

    All or nothing, in one transaction. Each event may carry its own `idempotency_key`
    (distinct within the batch): an event whose key was used before with the same event
    (event_type, payload, consumer, channels, ordering_key) is answered as then and creates
    nothing (`replayed: true`); a key used with another event rejects the whole batch with 409
    naming its index. A bad event answers 422 naming `events.<index>.<field>`. The body may be
    max(WEBHOOKS_MAX_PAYLOAD_BYTES, 1 MiB), each event in it at most WEBHOOKS_MAX_PAYLOAD_BYTES
    (413 naming its index).
    """
    limit = get_settings().max_payload_bytes
    # Only a body over the limit can hold an event over it: measure each one then, as its own
    # body would be sent (compact UTF-8: a single event of the same bytes is accepted).
    sent = json.loads(g.raw_body)["events"] if len(g.raw_body) > limit else None
    items = []
    for index, event in enumerate(data["events"]):
        if sent is not None:
            size = len(json.dumps(sent[index], separators=(",", ":"), ensure_ascii=False).encode())
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
    accepted = ingest.publish_batch(db(), tenant(), items)
    # Built by hand, not dumped by EventBatchResultSchema (which documents it): dumping 500
    # items through marshmallow was a tenth of the request.
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
@bp.response(200, EventDetailSchema)
def get(event_id: uuid.UUID) -> Any:
    """Get an event and its deliveries"""
    session = db()
    event = queries.find_event(session, tenant(), event_id)
    deliveries = queries.event_deliveries(session, event, NESTED_LIMIT)
    return Detail(
        event,
        deliveries=deliveries.items,
        more_deliveries=deliveries.next_key is not None,
        deliveries_url=f"/v1/deliveries?event_id={event.id}",
    )
