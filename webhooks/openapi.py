"""The OpenAPI 3 description of the API at /openapi.json, and Swagger UI showing it at /docs.

flask-smorest builds the description from the views themselves: `@bp.arguments` and
`@bp.response` on each view (webhooks/api/) name its schemas and status, the docstring gives
its summary. This module only adds what follows from the whole API rather than one view:

- the error answers each operation can give, all with the error envelope: 401 and 429 with a
  key, 400/413/415/422 with a body, 404 with a path ID, 422 with a query;
- every field of a response schema marked required (an answer always carries all of them, null
  where nullable), which makes the fuzzing strict;
- query parameters without `null`, and patterns in the regex dialect of JSON Schema.

/docs is Swagger UI from the `swagger-ui-bundle` package, served by the app itself: no CDN.
"""

from __future__ import annotations

import copy
import http
import re
from typing import Any

import flask
from flask import Flask, Response, current_app, render_template_string, request, url_for
from flask_smorest import Api as SmorestApi
from swagger_ui_bundle import swagger_ui_path

from webhooks.api.common import Blueprint
from webhooks.schemas import ErrorSchema
from webhooks.schemas.consumers import MAX_UID, UID_PATTERN
from webhooks.schemas.events import EVENT_TYPE_PATTERN

TITLE = "webhooks"
VERSION = "0.1.0"
OPENAPI_VERSION = "3.0.3"

# One reusable response per error status (named as flask-smorest names them); every one carries
# the error envelope.
ERRORS: dict[int, str] = {
    400: "The body is not valid JSON.",
    401: "No API key, or an invalid or revoked one.",
    404: "No such resource for this tenant (another tenant's resources too).",
    409: "The request conflicts with the resource's state or an earlier request.",
    413: "The body is larger than allowed.",
    415: "The body is not application/json.",
    422: "Some fields are missing or invalid; `details.fields` names them.",
    429: "Over the tenant's rate limit (a batch costs its events, a replay the deliveries it"
    " requeues), or too many requests without a valid key from this address; wait"
    " `Retry-After` seconds.",
}
CONFLICT = http.HTTPStatus.CONFLICT.name

# Path parameters that are not UUIDs.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "uid": {"type": "string", "minLength": 1, "maxLength": MAX_UID, "pattern": UID_PATTERN},
    "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": EVENT_TYPE_PATTERN},
}

# Routes that are not API operations: the HTML pages, and the files Swagger UI loads.
UNDOCUMENTED_ENDPOINTS = {"static", "openapi.static", "openapi.docs_init"}
PAGE_BLUEPRINTS = {"console", "portal"}


# What every authenticated /v1 answer carries (webhooks/ratelimit.py, from the counting call).
RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": "Requests (or events) this tenant may make in the window",
    "X-RateLimit-Remaining": "What is left of it in this window",
    "X-RateLimit-Reset": "When the window ends, in unix seconds",
}
_RATE_LIMIT_REFS = {name: name for name in RATE_LIMIT_HEADERS}


class Api(SmorestApi):
    ERROR_SCHEMA = ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None  # each operation lists its own error statuses

    def _register_responses(self) -> None:
        assert self.spec is not None
        self.spec.components.header(
            "Retry-After",
            {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}},
        )
        for name, description in RATE_LIMIT_HEADERS.items():
            self.spec.components.header(
                name, {"description": description, "schema": {"type": "integer", "minimum": 0}}
            )
        for status, description in ERRORS.items():
            response: dict[str, Any] = {
                "description": description,
                "content": {"application/json": {"schema": ErrorSchema}},
            }
            if status == 429:
                response["headers"] = {"Retry-After": "Retry-After", **_RATE_LIMIT_REFS}
            self.spec.components.response(http.HTTPStatus(status).name, response)


def _error_statuses(operation: dict[str, Any], params: list[dict[str, Any]]) -> set[int]:
    """The error statuses that follow from what an operation takes (auth, body, IDs, query)."""
    statuses = {int(s) for s in operation["responses"] if str(s).isdigit() and int(s) >= 400}
    if operation.get("security") != []:
        statuses |= {401, 429}
    if "requestBody" in operation:
        statuses |= {400, 413, 415, 422}
    if any(p["in"] == "path" for p in params):
        statuses.add(404)
    if any(p["in"] == "query" for p in params):
        statuses.add(422)
    return statuses & set(ERRORS)


def _referenced(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            _referenced(value, found)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, found)


def _refine(out: dict[str, Any]) -> None:
    components = out["components"]["schemas"]
    outputs: set[str] = set()
    for path, item in out["paths"].items():
        for param in item.get("parameters", []):
            if param["in"] == "path" and param["name"] in PATH_PARAMETERS:
                param["schema"] = dict(PATH_PARAMETERS[param["name"]])
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation.setdefault("operationId", _operation_id(method, path))
            responses = operation["responses"]
            params = item.get("parameters", []) + operation.get("parameters", [])
            for status in _error_statuses(operation, params):
                responses[str(status)] = {
                    "$ref": f"#/components/responses/{http.HTTPStatus(status).name}"
                }
            operation["responses"] = dict(sorted(responses.items()))
            for status, response in responses.items():
                if status.startswith("2"):
                    _referenced(response, outputs)
                    if operation.get("security") != []:
                        response["headers"] = {
                            **response.get("headers", {}),
                            **{
                                n: {"$ref": f"#/components/headers/{n}"} for n in RATE_LIMIT_HEADERS
                            },
                        }
                    if response.get("description") == http.HTTPStatus(int(status)).phrase:
                        response["description"] = operation["summary"]
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
    # One tag per group of operations that has some (flask-smorest adds one per blueprint).
    used = {t for item in out["paths"].values() for o in item.values() for t in _tags(o)}
    out["tags"] = [t for t in out.get("tags", []) if t["name"] in used]
    out["tags"] += [{"name": n} for n in sorted(used - {t["name"] for t in out["tags"]})]
    components.pop("PaginationMetadata", None)  # flask-smorest's, for a feature not used
    # Output schemas, and those nested in them, list every field as required.
    pending = list(outputs)
    while pending:
        component = components[pending.pop()]
        nested: set[str] = set()
        _referenced(component, nested)
        pending.extend(nested - outputs)
        outputs |= nested
        component["required"] = sorted(component.get("properties", {}))
    _ecma_patterns(out)


def _operation_id(method: str, path: str) -> str:
    """`postEvents`, `getEventsByEventId`...: the method, then the path's words, and the
    last path parameter when the path ends with one (unique: a list and an item differ)."""
    words = re.sub(r"{\w+}", "", path).strip("/").replace(".", "_")
    parts = [p for p in re.split(r"[/-]", words) if p and p != "v1"]
    last = re.search(r"{(\w+)}$", path)
    if last:
        parts += ["by", *last.group(1).split("_")]
    return method + "".join(p.capitalize() for p in parts)


def _tags(operation: Any) -> list[str]:
    return operation.get("tags", []) if isinstance(operation, dict) else []


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


def init_api(app: Flask, blueprints: list[Blueprint]) -> Api:
    """Register the API blueprints through flask-smorest, which documents their views."""
    app.config.update(
        API_TITLE=TITLE,
        API_VERSION=VERSION,
        OPENAPI_VERSION=OPENAPI_VERSION,
        API_SPEC_OPTIONS={
            "info": {
                "description": "Reliable outbound webhooks: publish events, and the service "
                "signs and delivers them to each subscription with retries. Errors answer "
                '`{"error": {"code", "message", "details"}}`.'
            },
            "security": [{"bearerAuth": []}],
        },
    )
    api = Api(app)
    assert api.spec is not None
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "An API key (`whk_…`)."}
    )
    for blueprint in [*blueprints, bp]:
        api.register_blueprint(blueprint)
    return api


# prometheus-flask-exporter's route, which no blueprint of ours holds.
METRICS = {
    "get": {
        "summary": "Prometheus metrics of the API",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
}


def get_spec(app: Flask) -> dict[str, Any]:
    """Return the app's description, built once."""
    spec = app.extensions.get("openapi")
    if spec is None:
        api: Api = app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
        assert api.spec is not None
        spec = copy.deepcopy(api.spec.to_dict())
        spec["paths"]["/metrics"] = copy.deepcopy(METRICS)
        _refine(spec)
        app.extensions["openapi"] = spec
    return spec


def build_spec() -> dict[str, Any]:
    """Return the description that a new app serves (for tests, before any request)."""
    from webhooks import create_app

    return get_spec(create_app())


def _flask_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def undocumented_rules(app: Flask) -> list[str]:
    """Return `METHOD path` for each URL rule of the app that the served description lacks."""
    paths = get_spec(app)["paths"]
    documented = {(m.upper(), p) for p, item in paths.items() for m in item if m != "parameters"}
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
    for entry in event_types.list_(db(), tenant_id, 500, include_archived=False).items:
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
    body = out["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    body["examples"] = examples
    out["components"]["schemas"]["EventCreate"]["properties"]["event_type"]["example"] = next(
        iter(examples)
    )
    return out


# Swagger UI, from the files of the swagger-ui-bundle package (static_url_path below).
bp = Blueprint(
    "openapi",
    __name__,
    auth=False,
    static_folder=str(swagger_ui_path),
    static_url_path="/docs/static",
    description="This description and the page that shows it",
)
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }} API {{ version }}</title>
<link rel="stylesheet" href="{{ url_for('openapi.static', filename='swagger-ui.css') }}">
</head><body>
<div id="swagger-ui" data-url="{{ url_for('openapi.openapi_json') }}"></div>
<script src="{{ url_for('openapi.static', filename='swagger-ui-bundle.js') }}"></script>
<script src="{{ url_for('openapi.docs_init') }}"></script>
</body></html>
"""
DOCS_INIT = """window.onload = function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({url: root.dataset.url, dom_id: "#swagger-ui", deepLinking: true});
};
"""
# Only the app's own files; Swagger UI sets inline styles and shows images as data: URLs.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)


@bp.route("/openapi.json", methods=["GET"], tags=["operations"])
@bp.doc(security=[])
@bp.alt_response(200, schema={"type": "object"}, description="OpenAPI 3", success=True)
def openapi_json() -> Any:
    """This description

    With a valid API key, the examples of a published event are the tenant's event types.
    """
    spec = get_spec(current_app)
    tenant_id = _optional_tenant()
    return with_catalogue(spec, tenant_id) if tenant_id is not None else spec


@bp.route("/docs", methods=["GET"], tags=["operations"])
@bp.doc(security=[])
@bp.alt_response(
    200,
    schema={"type": "string"},
    content_type="text/html",
    description="Swagger UI (served by the app: no CDN)",
    success=True,
)
def docs() -> Response:
    """A page that shows this description and sends requests (Swagger UI)"""
    html = render_template_string(DOCS_PAGE, title=TITLE, version=VERSION, url_for=url_for)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response


def docs_init() -> Response:
    return Response(DOCS_INIT, mimetype="text/javascript")


# A file of the page, not an operation: added past flask-smorest, which would document it.
flask.Blueprint.add_url_rule(bp, "/docs/init.js", "docs_init", docs_init)
