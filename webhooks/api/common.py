"""What every view shares: the error envelope, body and query parsing, auth, pagination."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from flask import Response, g, jsonify, request
from marshmallow import Schema, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from webhooks.db import new_session
from webhooks.schemas import encode_cursor
from webhooks.services import ServiceError
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

    Under /v1 the rate limiter has authenticated the key already (with its per-process
    cache, webhooks.ratelimit); elsewhere the key is looked up here.
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


def _unstorable(value: Any) -> str | None:
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
        reason = _unstorable(key) or _unstorable(value)
        if reason:
            problems[key] = [reason]
    if problems:
        raise ApiError(
            422, "validation_error", "some fields are missing or invalid", {"fields": problems}
        )


def load(schema: Schema, data: Any, **kwargs: Any) -> Any:
    """Validate with a schema; raise a 422 naming each bad field."""
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "the body must be a JSON object")
    try:
        return schema.load(data, **kwargs)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "some fields are missing or invalid", {"fields": exc.messages}
        ) from None


def load_query(schema: Schema) -> Any:
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "some query parameters are invalid", {"fields": exc.messages}
        ) from None


def page(items: list[Any], limit: int, dump: Schema) -> dict[str, Any]:
    """Return one page: `limit` items and the cursor of the next page, or null."""
    more = len(items) > limit
    items = items[:limit]
    return {
        "data": dump.dump(items, many=True),
        "next_cursor": encode_cursor(items[-1].id) if more and items else None,
    }


def register_error_handlers(app: Any) -> None:
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
