"""The OpenAPI 3 description of the API at /openapi.json, and a page that shows it at /docs.

The description is built with apispec from the marshmallow schemas the views use, from one
registry: `ROUTES` holds one `Route` per method and path, `SCHEMAS` the named schemas they refer
to. Views stay free of documentation. To document a new endpoint, add its schemas to `SCHEMAS`
and one `Route` to `ROUTES`; the error responses follow from what the route takes (a body, path
IDs, a query, auth). A test checks that every URL rule of the app has its entry.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, Response, current_app, render_template_string, request
from marshmallow import Schema, fields

from webhooks import schemas as s
from webhooks.models import AttemptResult
from webhooks.schemas.consumers import (
    MAX_METADATA,
    MAX_METADATA_VALUE,
    MAX_UID,
    UID_PATTERN,
    ConsumerCreateSchema,
    ConsumerSchema,
    ConsumerUpdateSchema,
)
from webhooks.schemas.deliveries import STATUSES
from webhooks.schemas.event_types import (
    EventTypeCreateSchema,
    EventTypeSchema,
    EventTypeUpdateSchema,
)
from webhooks.schemas.events import (
    CHANNEL_PATTERN,
    EVENT_TYPE_PATTERN,
    MAX_CHANNELS,
    EventBatchCreateSchema,
    EventBatchResultSchema,
)
from webhooks.schemas.portal import PortalLinkSchema
from webhooks.schemas.stats import AttemptCountsSchema, StatsQuery, SubscriptionStatsSchema
from webhooks.schemas.subscriptions import (
    HEADER_VALUE_PATTERN,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    SubscriptionListQuery,
)
from webhooks.services.stats import WINDOWS
from webhooks.signing import SCHEMES

TITLE = "webhooks"
VERSION = "0.1.0"
OPENAPI_VERSION = "3.0.3"


# Response bodies that have no schema of their own in webhooks.schemas.
def _page(item: type[Schema]) -> Schema:
    """The schema of one page of a list: its items and the cursor of the next page."""
    return Schema.from_dict(
        {
            "data": fields.List(fields.Nested(item), required=True),
            "next_cursor": fields.String(
                required=True,
                allow_none=True,
                metadata={"description": "pass as `cursor`; null at the end"},
            ),
        },
        name=f"{item.__name__.removesuffix('Schema')}Page",
    )()


class ReplayResultSchema(Schema):
    requeued = fields.Integer(required=True, metadata={"description": "deliveries sent again"})
    more = fields.Boolean(
        required=True, metadata={"description": "more matched than one call replays: call again"}
    )


class LivenessSchema(Schema):
    status = fields.String(required=True)


class ReadinessChecksSchema(Schema):
    database = fields.String(required=True)
    redis = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ready", "unavailable"]})
    checks = fields.Nested(ReadinessChecksSchema, required=True)


# Every named schema of the description. Output schemas list every field as required: a
# response always carries all of them (null where nullable), which makes the fuzzing strict.
SCHEMAS: dict[str, Schema] = {
    "Error": s.ErrorSchema(),
    "ConsumerCreate": ConsumerCreateSchema(),
    "ConsumerUpdate": ConsumerUpdateSchema(partial=True),
    "EventTypeCreate": EventTypeCreateSchema(),
    "EventTypeUpdate": EventTypeUpdateSchema(partial=True),
    "SubscriptionCreate": s.SubscriptionCreateSchema(),
    "SubscriptionUpdate": s.SubscriptionUpdateSchema(partial=True),
    "Replay": s.ReplaySchema(),
    "EventCreate": s.EventCreateSchema(),
    "EventBatchCreate": EventBatchCreateSchema(),
}
OUTPUT_SCHEMAS: dict[str, Schema] = {
    "Consumer": ConsumerSchema(),
    "ConsumerPage": _page(ConsumerSchema),
    "EventType": EventTypeSchema(),
    "EventTypePage": _page(EventTypeSchema),
    # Nested schemas come before the ones that hold them (apispec names nested ones itself).
    "Attempt": s.AttemptSchema(),
    "Delivery": s.DeliverySchema(),
    "DeliveryDetail": s.DeliveryDetailSchema(),
    "DeliveryPage": _page(s.DeliverySchema),
    "AttemptPage": _page(s.AttemptSchema),
    "Subscription": s.SubscriptionSchema(),
    "SubscriptionWithSecret": s.SubscriptionWithSecretSchema(),
    "SubscriptionPage": _page(s.SubscriptionSchema),
    "Circuit": s.SubscriptionHealthSchema().fields["circuit"].schema,  # type: ignore[attr-defined]
    "SubscriptionHealth": s.SubscriptionHealthSchema(),
    "ReplayResult": ReplayResultSchema(),
    "AttemptCounts": AttemptCountsSchema(),
    "PortalLink": PortalLinkSchema(),
    "SubscriptionStats": SubscriptionStatsSchema(),
    "Event": s.EventSchema(),
    "EventDetail": s.EventDetailSchema(),
    "EventBatchResult": EventBatchResultSchema(),
    "Liveness": LivenessSchema(),
    "ReadinessChecks": ReadinessChecksSchema(),
    "Readiness": ReadinessSchema(),
}

# One reusable response per error status; every one carries the error envelope.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not valid JSON."),
    401: ("Unauthorized", "No API key, or an invalid or revoked one."),
    404: ("NotFound", "No such resource for this tenant (another tenant's resources too)."),
    409: ("Conflict", "The request conflicts with the resource's state or an earlier request."),
    413: ("PayloadTooLarge", "The body is larger than allowed."),
    415: ("UnsupportedMediaType", "The body is not application/json."),
    422: ("ValidationError", "Some fields are missing or invalid; `details.fields` names them."),
    429: (
        "TooManyRequests",
        "Over the tenant's rate limit (a batch costs its events, a replay the deliveries it"
        " requeues), or too many requests without a valid key from this address; wait"
        " `Retry-After` seconds.",
    ),
}

IDEMPOTENCY_KEY = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "description": "Send the same key again to get the first answer instead of a new event "
    "(409 if the body differs).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


@dataclass(frozen=True)
class Route:
    """One operation: a method on a path (OpenAPI template, `{name}` for a UUID in the path)."""

    method: str
    path: str
    summary: str
    tag: str
    status: int = 200
    response: str | None = None  # name of the success body's schema; None for no body
    body: str | None = None  # name of the JSON request body's schema
    query: type[Schema] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()  # besides those implied by auth, body, path IDs and query
    auth: bool = True
    media_type: str = "application/json"
    response_headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_responses: dict[int, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def error_statuses(self) -> list[int]:
        implied: set[int] = set(self.errors)
        if self.auth:
            implied |= {401, 429}
        if self.body:
            implied |= {400, 413, 415, 422}
        if self.path_params:
            implied.add(404)
        if self.query is not None:
            implied.add(422)
        return sorted(implied)


SUB = "/v1/subscriptions/{subscription_id}"
CONSUMER = "/v1/consumers/{uid}"
EVENT_TYPE = "/v1/event-types/{name}"
ROUTES: list[Route] = [
    Route(
        "post",
        "/v1/event-types",
        "Add an event type to the catalogue",
        "event types",
        status=201,
        response="EventType",
        body="EventTypeCreate",
        errors=(409,),
        description="Events of a type with a `schema` (JSON Schema 2020-12) are checked at "
        "ingest: a payload that does not match is a 422 naming its JSON pointer, and nothing "
        "is stored. With WEBHOOKS_STRICT_EVENT_TYPES=true, events and subscriptions must name "
        "a known, unarchived type. `webhook.` names are the service's own.",
    ),
    Route(
        "get",
        "/v1/event-types",
        "List the event-type catalogue",
        "event types",
        response="EventTypePage",
        query=s.PageQuery,
    ),
    Route("get", EVENT_TYPE, "Get an event type", "event types", response="EventType"),
    Route(
        "patch",
        EVENT_TYPE,
        "Change an event type",
        "event types",
        response="EventType",
        body="EventTypeUpdate",
        description="Only the given fields change; `schema: null` removes the schema. "
        "Archived types stay readable and, unless types are strict, publishable.",
    ),
    Route(
        "post",
        "/v1/consumers",
        "Create a consumer",
        "consumers",
        status=201,
        response="Consumer",
        body="ConsumerCreate",
        errors=(409,),
        description="A consumer is one of your own customers, named by your `uid` for it. "
        "Its subscriptions get only the events that name it (`consumer`); 409 if the uid is "
        "taken.",
    ),
    Route(
        "get",
        "/v1/consumers",
        "List consumers",
        "consumers",
        response="ConsumerPage",
        query=s.PageQuery,
    ),
    Route("get", CONSUMER, "Get a consumer", "consumers", response="Consumer"),
    Route(
        "patch",
        CONSUMER,
        "Change a consumer",
        "consumers",
        response="Consumer",
        body="ConsumerUpdate",
        description="Only the given fields change; the uid stays.",
    ),
    Route(
        "delete",
        CONSUMER,
        "Delete a consumer and its subscriptions",
        "consumers",
        status=204,
        description="Each of its subscriptions is deleted as DELETE /v1/subscriptions/{id} "
        "would: unfinished deliveries end as failed, history stays readable. Its uid may be "
        "used again.",
    ),
    Route(
        "post",
        CONSUMER + "/portal-links",
        "Make a link that signs this consumer into the portal",
        "consumers",
        status=201,
        response="PortalLink",
        description="The URL opens the consumer portal for this one consumer: its endpoints, "
        "secrets, deliveries and test events. It works until `expires_at` "
        "(WEBHOOKS_PORTAL_LINK_SECONDS after now) and may be embedded in an iframe of the "
        "origins in WEBHOOKS_PORTAL_FRAME_ANCESTORS. Hand it to the consumer's browser only.",
    ),
    Route(
        "post",
        "/v1/subscriptions",
        "Create a subscription",
        "subscriptions",
        status=201,
        response="SubscriptionWithSecret",
        body="SubscriptionCreate",
        description="The answer holds the signing secret; no other answer shows it again. "
        "The URL must be http(s) and resolve only to public addresses. With `consumer`, it "
        "gets only events that name that consumer; without, only events that name none.",
    ),
    Route(
        "get",
        "/v1/subscriptions",
        "List subscriptions",
        "subscriptions",
        response="SubscriptionPage",
        query=SubscriptionListQuery,
    ),
    Route("get", SUB, "Get a subscription", "subscriptions", response="Subscription"),
    Route(
        "patch",
        SUB,
        "Change a subscription",
        "subscriptions",
        response="Subscription",
        body="SubscriptionUpdate",
        description="Only the given fields change. `status: active` re-enables a disabled "
        "subscription and closes its circuit.",
    ),
    Route(
        "delete",
        SUB,
        "Delete a subscription",
        "subscriptions",
        status=204,
        description="Its unfinished deliveries end as failed; its history stays readable.",
    ),
    Route(
        "post",
        SUB + "/rotate-secret",
        "Rotate the signing secret",
        "subscriptions",
        response="SubscriptionWithSecret",
        description="The new secret signs at once; the old one keeps signing too (a second "
        "signature) for WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS.",
    ),
    Route(
        "get",
        SUB + "/health",
        "Circuit state and delivery counts",
        "subscriptions",
        response="SubscriptionHealth",
    ),
    Route(
        "get",
        SUB + "/stats",
        "Attempt statistics over a window",
        "subscriptions",
        response="SubscriptionStats",
        query=StatsQuery,
        description="Attempts made in the last `window` (1h, 24h or 7d; default 24h) by "
        "result, the success rate, and the median and 95th percentile attempt duration. Read "
        "from one range of the index on attempts (subscription_id, created_at).",
    ),
    Route(
        "post",
        SUB + "/replay",
        "Replay finished deliveries",
        "subscriptions",
        status=202,
        response="ReplayResult",
        body="Replay",
        errors=(409,),
        description="Sends again the delivered or failed deliveries created in [since, until).",
    ),
    Route(
        "post",
        "/v1/events",
        "Publish an event",
        "events",
        status=202,
        response="Event",
        body="EventCreate",
        headers=(IDEMPOTENCY_KEY,),
        errors=(409,),
        response_headers={
            "Idempotent-Replayed": {
                "description": "`true` when the answer is that of an earlier request with the "
                "same Idempotency-Key",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    ),
    Route(
        "post",
        "/v1/events/batch",
        "Publish up to 500 events at once",
        "events",
        status=202,
        response="EventBatchResult",
        body="EventBatchCreate",
        errors=(409,),
        description="All or nothing, in one transaction. Each event may carry its own "
        "`idempotency_key` (distinct within the batch): an event whose key was used before with "
        "the same event_type and payload is answered as then and creates nothing "
        "(`replayed: true`); a key used with another event rejects the whole batch with 409 "
        "naming its index. A bad event answers 422 naming `events.<index>.<field>`. The body may "
        "be max(WEBHOOKS_MAX_PAYLOAD_BYTES, 1 MiB), each event in it at most "
        "WEBHOOKS_MAX_PAYLOAD_BYTES (413 naming its index).",
    ),
    Route(
        "get",
        "/v1/events/{event_id}",
        "Get an event and its deliveries",
        "events",
        response="EventDetail",
    ),
    Route(
        "get",
        "/v1/deliveries",
        "List deliveries",
        "deliveries",
        response="DeliveryPage",
        query=s.DeliveryListQuery,
    ),
    Route(
        "get",
        "/v1/deliveries/{delivery_id}",
        "Get a delivery and its attempts",
        "deliveries",
        response="DeliveryDetail",
    ),
    Route(
        "get",
        "/v1/deliveries/{delivery_id}/attempts",
        "List a delivery's attempts, oldest first",
        "deliveries",
        response="AttemptPage",
        query=s.PageQuery,
        description="Every attempt; the delivery's own answer holds the first 100 only.",
    ),
    Route(
        "post",
        "/v1/deliveries/{delivery_id}/retry",
        "Retry a finished delivery",
        "deliveries",
        status=202,
        response="Delivery",
        errors=(409,),
        description="Gives a delivered or failed delivery a fresh set of attempts, same "
        "webhook-id. 409 while it is still in progress or its subscription is disabled.",
    ),
    Route("get", "/healthz", "Liveness", "operations", response="Liveness", auth=False),
    Route(
        "get",
        "/readyz",
        "Readiness: database and Redis reachable",
        "operations",
        response="Readiness",
        auth=False,
        other_responses={
            503: {
                "description": "Not ready",
                "content": {"application/json": {"schema": "Readiness"}},
            }
        },
    ),
    Route(
        "get",
        "/metrics",
        "Prometheus metrics of the API",
        "operations",
        auth=False,
        media_type="text/plain",
        other_responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    Route(
        "get",
        "/openapi.json",
        "This description",
        "operations",
        auth=False,
        other_responses={
            200: {
                "description": "OpenAPI 3",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    ),
    Route(
        "get",
        "/docs",
        "A page that shows this description",
        "operations",
        auth=False,
        other_responses={
            200: {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    ),
]

# Where a Flask URL rule has no documentation on purpose: the HTML pages are not the API.
UNDOCUMENTED_ENDPOINTS = {"static"}
PAGE_BLUEPRINTS = {"console", "portal"}


# Path parameters that are not UUIDs.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "uid": {"type": "string", "minLength": 1, "maxLength": MAX_UID, "pattern": UID_PATTERN},
    "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": EVENT_TYPE_PATTERN},
}


def _operation(route: Route, plugin: MarshmallowPlugin) -> dict[str, Any]:
    responses: dict[Any, Any] = {}
    if route.response:
        responses[route.status] = {
            "description": route.summary,
            "content": {route.media_type: {"schema": route.response}},
        }
    else:
        responses[route.status] = {"description": route.summary}
    if route.response_headers:
        responses[route.status]["headers"] = route.response_headers
    responses.update(route.other_responses)
    for status in route.error_statuses():
        responses[status] = ERRORS[status][0]

    parameters: list[dict[str, Any]] = [
        {
            "in": "path",
            "name": name,
            "required": True,
            "schema": PATH_PARAMETERS.get(name, {"type": "string", "format": "uuid"}),
        }
        for name in route.path_params
    ]
    if route.query is not None:
        assert plugin.converter is not None  # set once the plugin joins an APISpec
        parameters.extend(plugin.converter.schema2parameters(route.query(), location="query"))
    parameters.extend(route.headers)

    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
    }
    if route.description:
        operation["description"] = route.description
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    if not route.auth:
        operation["security"] = []
    return operation


def _operation_id(route: Route) -> str:
    words = re.sub(r"{\w+}", "", route.path).strip("/").replace(".", "_")
    parts = [p for p in re.split(r"[/-]", words) if p and p != "v1"]
    return route.method + "".join(p.capitalize() for p in parts)


# What the schemas check in code (validators apispec cannot read), said in JSON Schema.
EVENT_TYPE_OR_STAR = r"^(\*|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*)$"
HEADERS = {
    "type": "object",
    "maxProperties": MAX_HEADERS,
    "description": "Sent with every delivery. Names may not be `webhook-*`, `host`, "
    "`content-type`, `content-length`, `user-agent` or hop-by-hop headers.",
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_HEADER_VALUE,
        "pattern": HEADER_VALUE_PATTERN.replace("\\Z", "$"),
    },
}
CHANNELS = {
    "maxItems": MAX_CHANNELS,
    "items": {"type": "string", "pattern": CHANNEL_PATTERN},
}
METADATA = {
    "type": "object",
    "maxProperties": MAX_METADATA,
    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
}
FILTER = {
    "type": "object",
    "nullable": True,
    "description": "Matched against the payload. Each key is a condition, all must hold: a "
    "field name descends (nested fields as nested objects; a plain value means $eq), and "
    "$eq, $neq, $gt, $gte, $lt, $lte, $in, $nin, $exists, $startsWith, $and, $or, $not "
    "compare or combine. A wrong filter is a 422 naming its JSON pointer.",
    "example": {"customer": {"tier": "gold"}, "amount": {"$gte": 100}},
}
NOT_RESERVED = {"not": {"pattern": "^webhook\\."}}
REFINEMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("SubscriptionCreate", "channels"): CHANNELS,
    ("SubscriptionUpdate", "channels"): CHANNELS,
    ("SubscriptionCreate", "filter"): FILTER,
    ("SubscriptionUpdate", "filter"): FILTER,
    ("EventCreate", "channels"): CHANNELS,
    ("EventCreate", "event_type"): NOT_RESERVED,
    ("EventTypeCreate", "name"): NOT_RESERVED,
    ("ConsumerCreate", "metadata"): METADATA,
    ("ConsumerUpdate", "metadata"): METADATA,
    ("SubscriptionCreate", "event_types"): {
        "items": {"type": "string", "maxLength": 200, "pattern": EVENT_TYPE_OR_STAR}
    },
    ("SubscriptionUpdate", "event_types"): {
        "items": {"type": "string", "maxLength": 200, "pattern": EVENT_TYPE_OR_STAR}
    },
    ("SubscriptionCreate", "headers"): HEADERS,
    ("SubscriptionUpdate", "headers"): HEADERS,
    ("Subscription", "status"): {"enum": ["active", "disabled"]},
    ("Subscription", "signature_scheme"): {"enum": list(SCHEMES)},
    ("Delivery", "status"): {"enum": STATUSES},
    ("Attempt", "result"): {"enum": [r.value for r in AttemptResult]},
    ("Circuit", "state"): {"enum": ["closed", "open", "half_open", "unknown"]},
    ("SubscriptionStats", "window"): {"enum": list(WINDOWS)},
}


def _refine(out: dict[str, Any]) -> None:
    components = out["components"]["schemas"]
    for (name, prop), extra in REFINEMENTS.items():
        components[name]["properties"][prop].update(extra)
    for name in OUTPUT_SCHEMAS:
        component = components[name]
        component["required"] = sorted(component.get("properties", {}))
    for item in out["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["in"] == "query":
                    # A query string has no null: an absent parameter is the default.
                    schema = param["schema"]
                    schema.pop("nullable", None)
                    if schema.get("default", 0) is None:
                        del schema["default"]
                    if "enum" in schema:
                        schema["enum"] = [v for v in schema["enum"] if v is not None]
                if param["name"] == "cursor":
                    # 16 bytes in unpadded URL-safe base64.
                    param["schema"]["pattern"] = "^[A-Za-z0-9_-]{22}$"
    _ecma_patterns(out)


def _ecma_patterns(node: Any) -> None:
    """Rewrite Python's end anchor \\Z as $ (the same in ECMA regex, which has no \\Z)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str) and value.endswith("\\Z"):
                node[key] = value[:-2] + "$"
            else:
                _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI description of every route in ROUTES."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE,
        version=VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "Reliable outbound webhooks: publish events, and the service signs "
            "and delivers them to each subscription with retries. Errors answer "
            '`{"error": {"code", "message", "details"}}`.'
        },
        security=[{"bearerAuth": []}],
    )
    spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "description": "An API key (`whk_…`)."},
    )
    for name, schema in {**SCHEMAS, **OUTPUT_SCHEMAS}.items():
        spec.components.schema(name, schema=schema)
    spec.components.header(
        "Retry-After",
        {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}},
    )
    for status, (name, description) in ERRORS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": "Error"}},
        }
        if status == 429:
            response["headers"] = {"Retry-After": "Retry-After"}
        spec.components.response(name, response)

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, plugin)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)

    out = spec.to_dict()
    _refine(out)
    return out


def _flask_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def undocumented_rules(app: Flask) -> list[str]:
    """Return `METHOD path` for each URL rule of the app that ROUTES does not describe."""
    documented = {(r.method.upper(), r.path) for r in ROUTES}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS or rule.endpoint.partition(".")[0] in (
            PAGE_BLUEPRINTS
        ):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (method, _flask_to_openapi(rule.rule)) not in documented:
                missing.append(f"{method} {rule.rule}")
    return missing


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ spec.info.title }} API {{ spec.info.version }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}
.m{display:inline-block;min-width:4.5em;font-weight:bold;text-transform:uppercase}
.get{color:#1565c0}.post{color:#2e7d32}.patch{color:#ef6c00}.delete{color:#c62828}
code{background:#f4f4f4;padding:0 .2em}table{border-collapse:collapse;margin:.3em 0}
td,th{border:1px solid #e2e2e2;padding:.15em .5em;text-align:left;vertical-align:top}
small{color:#666}
</style></head><body>
<h1>{{ spec.info.title }} API <small>{{ spec.info.version }}</small></h1>
<p>{{ spec.info.description }}</p>
<p>Authenticate with <code>Authorization: Bearer &lt;API key&gt;</code>.
The machine-readable description: <a href="openapi.json">openapi.json</a>.</p>
{% for tag, ops in groups %}<h2>{{ tag }}</h2>
{% for path, method, op in ops %}<div class="op" id="{{ op.operationId }}">
<div><span class="m {{ method }}">{{ method }}</span> <code>{{ path }}</code>
 — {{ op.summary }}{% if op.security == [] %} <small>(no auth)</small>{% endif %}</div>
{% if op.description %}<p>{{ op.description }}</p>{% endif %}
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code>{% if p.required %} *{% endif %}</td>
<td>{{ p.in }}</td><td>{{ describe(p.schema) }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}<div>body: {{ body(op.requestBody) }}</div>{% endif %}
<table>{% for status, r in op.responses.items() %}<tr><td>{{ status }}</td>
<td>{{ response(r) }}</td></tr>{% endfor %}</table>
</div>{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in spec.components.schemas.items() %}<div class="op" id="schema-{{ name }}">
<b>{{ name }}</b><table>{% for prop, ps in schema.get("properties", {}).items() %}<tr>
<td><code>{{ prop }}</code>{% if prop in schema.get("required", []) %} *{% endif %}</td>
<td>{{ describe(ps) }}</td></tr>{% endfor %}</table></div>{% endfor %}
</body></html>
"""


def _describe(schema: dict[str, Any] | None) -> str:
    """Say in a few words what a JSON schema accepts."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "any")
    if kind == "array":
        text = f"array of {_describe(schema.get('items'))}"
    else:
        text = kind + (f" ({schema['format']})" if "format" in schema else "")
    if "enum" in schema:
        text += " one of " + ", ".join(str(v) for v in schema["enum"] if v is not None)
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("maxLength", "length ≤")):
        if key in schema:
            text += f" {word} {schema[key]}"
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    if schema.get("nullable"):
        text += " or null"
    return text


def _body(content: dict[str, Any]) -> str:
    media = content.get("content", {})
    return "; ".join(f"{m}: {_describe(c.get('schema'))}" for m, c in media.items()) or "none"


def _response(response: dict[str, Any], spec: dict[str, Any]) -> str:
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        response = spec["components"]["responses"][name]
        return f"{response['description']} ({_body(response)})"
    return f"{response.get('description', '')} ({_body(response)})"


def get_spec(app: Flask) -> dict[str, Any]:
    """Return the app's description, built once."""
    spec = app.extensions.get("openapi")
    if spec is None:
        spec = app.extensions["openapi"] = build_spec()
    return spec


def _optional_tenant() -> Any:
    """The tenant of a valid bearer key, if the request carries one (the page is public)."""
    from webhooks.api.common import db
    from webhooks.services.tenants import authenticate

    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return authenticate(db(), key.strip())


def with_catalogue(spec: dict[str, Any], tenant_id: Any) -> dict[str, Any]:
    """Return the description with the tenant's event-type catalogue as examples of a
    published event: one per unarchived type, its payload the schema's first example."""
    from webhooks.api.common import db
    from webhooks.services import event_types

    examples: dict[str, Any] = {}
    for entry in event_types.list_(db(), tenant_id, 500, include_archived=False):
        schema = entry.schema if isinstance(entry.schema, dict) else {}
        samples = schema.get("examples")
        payload = samples[0] if isinstance(samples, list) and samples else {}
        examples[entry.name] = {
            "summary": entry.description or entry.name,
            "value": {"event_type": entry.name, "payload": payload},
        }
    if not examples:
        return spec
    out = copy.deepcopy(spec)
    for path in ("/v1/events",):
        body = out["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body["examples"] = examples
    out["components"]["schemas"]["EventCreate"]["properties"]["event_type"]["example"] = next(
        iter(examples)
    )
    return out


def register_openapi(app: Flask) -> None:
    """Serve /openapi.json and /docs (a self-contained page: no CDN, works offline)."""

    @app.get("/openapi.json")
    def openapi_json() -> Any:
        spec = get_spec(current_app)
        tenant_id = _optional_tenant()
        return with_catalogue(spec, tenant_id) if tenant_id is not None else spec

    @app.get("/docs")
    def openapi_docs() -> Response:
        spec = get_spec(current_app)
        groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for path, item in spec["paths"].items():
            for method, op in item.items():
                groups.setdefault(op["tags"][0], []).append((path, method, op))
        html = render_template_string(
            DOCS_PAGE,
            spec=spec,
            groups=list(groups.items()),
            describe=_describe,
            body=_body,
            response=lambda r: _response(r, spec),
        )
        return Response(html, mimetype="text/html")
