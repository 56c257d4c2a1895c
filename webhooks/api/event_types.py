from __future__ import annotations

from webhooks.api.common import Blueprint, named_views
from webhooks.schemas.event_types import (
    EventTypeCreateSchema,
    EventTypeSchema,
    EventTypeUpdateSchema,
)
from webhooks.services import event_types as service

bp = Blueprint(
    "event_types", __name__, url_prefix="/v1/event-types", description="The event catalogue"
)


named_views(
    bp,
    service,
    key="name",
    schemas=(EventTypeCreateSchema, EventTypeSchema, EventTypeUpdateSchema),
    docs={
        "create": """Add an event type to the catalogue

        Events of a type with a `schema` (JSON Schema 2020-12) are checked at ingest: a payload
        that does not match is a 422 naming its JSON pointer, and nothing is stored. With
        WEBHOOKS_STRICT_EVENT_TYPES=true, events and subscriptions must name a known, unarchived
        type. `webhook.` names are the service's own.
        """,
        "list_": "List the event-type catalogue",
        "get": "Get an event type",
        "patch": """Change an event type

        Only the given fields change; `schema: null` removes the schema. Archived types stay
        readable and, unless types are strict, publishable.
        """,
    },
)
