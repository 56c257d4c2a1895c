"""What every view shares: the error envelope, body and query parsing, auth, pagination.

Views are flask-smorest blueprints (`Blueprint` below): `@bp.arguments` parses a body or a
query string with a marshmallow schema through `Parser`, which keeps the service's own checks
of a JSON body (415, 413, 400, text PostgreSQL refuses) and its error envelope; `@bp.response`
dumps the answer and, with them, documents the operation in /openapi.json.
"""

from __future__ import annotations

import functools
import json
import math
import typing
import uuid
from typing import Any

from flask import Response, g, jsonify, request
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema, ValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from webhooks.db import new_session
from webhooks.schemas import PageQuery, encode_cursor
from webhooks.schemas.common import page_schema
from webhooks.services import ServiceError
from webhooks.services.paging import Page
from webhooks.services.tenants import authenticate

DEFAULT_BODY_LIMIT = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def error_response(status: int, code: str, message: str, details: dict | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def db() -> Session:
    """Return this request's session (closed at teardown)."""
    if "db" not in g:
        g.db = new_session()
    return g.db


def close_db(_: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def require_tenant() -> uuid.UUID:
    """Return the tenant of the bearer key, and remember it; raise 401 without a valid key.

    Every API blueprint runs it before its views (so a request without a valid key is a 401
    before its body is read). Under /v1 the rate limiter has authenticated the key already
    (with its per-process cache, webhooks.ratelimit); elsewhere the key is looked up here.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    if "auth" in g:
        tenant_id = g.auth.tenant_id if g.auth is not None else None
    else:
        tenant_id = authenticate(db(), key.strip())
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "the API key is invalid or revoked")
    g.tenant_id = tenant_id
    return tenant_id


def _authenticate() -> None:
    require_tenant()  # a before_request hook: anything it returned would be the answer


def tenant() -> uuid.UUID:
    """Return this request's tenant (set by require_tenant before the view)."""
    tenant_id: uuid.UUID = g.tenant_id
    return tenant_id


def body_limit(limit: Any) -> Any:
    """Decorate a view to accept a JSON body of at most `limit()` bytes (64 KiB otherwise).

    Put it above `@bp.arguments`, which reads the body.
    """

    def decorator(view: Any) -> Any:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.body_limit = limit()
            return view(*args, **kwargs)

        return wrapper

    return decorator


def read_json(limit: int = DEFAULT_BODY_LIMIT) -> tuple[Any, bytes]:
    """Return the parsed JSON body and its raw bytes, or raise 415, 413 or 400."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, "payload_too_large", f"the body may be at most {limit} bytes", {"limit": limit}
        )
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(
            413, "payload_too_large", f"the body may be at most {limit} bytes", {"limit": limit}
        )
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's stack
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    _check_storable(data)
    return data, raw


def _not_json(name: str) -> Any:
    # Python reads NaN and Infinity, which are not JSON and which PostgreSQL's jsonb refuses.
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def unstorable(value: Any) -> str | None:
    """Say why PostgreSQL cannot store a string somewhere in this JSON value, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "text may not contain the NUL character (\\u0000)"
            try:
                item.encode()
            except UnicodeEncodeError:
                return "text may not contain unpaired surrogates (\\ud800-\\udfff)"
    return None


def _check_storable(data: Any) -> None:
    """Raise a 422 naming each top-level field that holds text PostgreSQL refuses."""
    if not isinstance(data, dict):
        return
    problems: dict[str, list[str]] = {}
    for key, value in data.items():
        reason = unstorable(key) or unstorable(value)
        if reason:
            problems[key] = [reason]
    if problems:
        raise ApiError(
            422, "validation_error", "some fields are missing or invalid", {"fields": problems}
        )


class Parser(FlaskParser):
    """webargs' Flask parser with the service's JSON body checks and error envelope."""

    # Unknown fields are refused in every location, as the schemas say (webargs would drop
    # unknown query parameters silently).
    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}

    def load_json(self, req: Any, schema: Schema) -> Any:
        data, raw = read_json(g.get("body_limit", DEFAULT_BODY_LIMIT))
        if not isinstance(data, dict):
            raise ApiError(422, "validation_error", "the body must be a JSON object")
        g.raw_body = raw
        return data

    def handle_error(
        self, error: ValidationError, req: Any, schema: Schema, **_: Any
    ) -> typing.NoReturn:
        # webargs files the messages under their location: {"query": {"limit": [...]}}.
        ((location, fields),) = typing.cast(dict[str, Any], error.messages).items()
        if location == "query":
            message = "some query parameters are invalid"
        else:
            message = "some fields are missing or invalid"
        raise ApiError(422, "validation_error", message, {"fields": fields}) from None


class Blueprint(SmorestBlueprint):
    """An API blueprint: every view needs a valid API key, arguments parse through Parser."""

    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args: Any, auth: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if auth:
            self.before_request(_authenticate)


class Detail:
    """A resource as its schema dumps it, with more attributes (the lists that hang off it)."""

    def __init__(self, base: Any, **more: Any):
        self.__dict__.update(more)
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def page(found: Page[Any], key: Any = None) -> dict[str, Any]:
    """Return one page as the API answers it: the items and the cursor of the next page."""
    next_key = found.next_key
    if next_key is not None and key is not None:
        next_key = key(next_key)
    return {
        "data": found.items,
        "next_cursor": encode_cursor(next_key) if next_key is not None else None,
    }


def named_views(
    bp: Blueprint,
    service: Any,
    key: str,
    schemas: tuple[type[Schema], type[Schema], type[Schema]],
    docs: dict[str, str],
) -> None:
    """Add the views of a tenant's records that a name in the path finds (a consumer's uid, an
    event type's name): create (409 if the name is taken), list, get and change.

    Each view hands its arguments to the `service` module's function of the same name, which
    holds all that differs between such records. `schemas` are the create, answer and update
    schemas; `docs` gives each view (by name) its docstring, its summary and description in
    /openapi.json.
    """
    create_schema, schema, update_schema = schemas

    def documented(view: Any) -> Any:
        view.__doc__ = docs[view.__name__]
        return view

    @bp.post("")
    @bp.arguments(create_schema())
    @bp.response(201, schema)
    @bp.alt_response(409, response="CONFLICT")
    @documented
    def create(data: dict[str, Any]) -> Any:
        return service.create(db(), tenant(), data)

    @bp.get("")
    @bp.arguments(PageQuery(), location="query")
    @bp.response(200, page_schema(schema))
    @documented
    def list_(args: dict[str, Any]) -> Any:
        return page(service.list_(db(), tenant(), args["limit"], args["cursor"]))

    # The name comes as the keyword argument `key` (Flask passes path values by name).
    @bp.get(f"/<{key}>")
    @bp.response(200, schema)
    @documented
    def get(**path: str) -> Any:
        return service.get(db(), tenant(), path[key])

    @bp.patch(f"/<{key}>")
    @bp.arguments(update_schema(partial=True))
    @bp.response(200, schema)
    @documented
    def patch(data: dict[str, Any], **path: str) -> Any:
        return service.update(db(), tenant(), path[key], data)


def register_error_handlers(app: Any) -> None:
    @app.after_request
    def _no_store(response: Response) -> Response:
        # The API's answers are a tenant's data, secrets among them (a subscription's signing
        # secret, once): no shared or browser cache keeps them.
        if request.path.startswith("/v1/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for header in ("Allow", "Retry-After"):
            value = exc.get_response().headers.get(header)
            if value:
                response.headers[header] = value
        return response

    @app.errorhandler(DataError)
    def _value_refused(exc: DataError) -> Response:
        # PostgreSQL refused a value that got past the checks (a NUL character in a path, a
        # number beyond a column's range): the request's fault, and nothing was stored.
        app.logger.warning("value refused by the database: %s", exc.orig)
        return error_response(
            400, "invalid_value", "a value in this request cannot be stored or looked up"
        )

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        # Nothing was accepted: the client may safely send the same request again.
        app.logger.error("database unavailable: %s", exc)
        response = error_response(503, "unavailable", "the database is unavailable; retry later")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "something went wrong on our side")
