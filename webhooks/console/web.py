"""What the console and the portal share: the session cookie, CSRF tokens, the sign-in limit
and the security headers of every page."""

from __future__ import annotations

import hmac
import math
import secrets
import uuid
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    abort,
    g,
    has_request_context,
    render_template,
    request,
    session,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from config.pages import get_page_settings
from webhooks import ratelimit
from webhooks.api.common import db, unstorable
from webhooks.ratelimit import parse_limit
from webhooks.services import ServiceError, tenants

CSRF_FIELD = "csrf_token"


class PageSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over HTTPS."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # The API takes bearer keys, never this cookie: its requests skip reading and signing
        # it (a serializer is built per request), which was 3-4 % of an ingest's CPU.
        if request.path.startswith("/v1/"):
            return self.null_session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(app.config["SESSION_COOKIE_SECURE"])
        return configured or (has_request_context() and request.is_secure)


def error_pages(bp: Blueprint, template: str) -> None:
    """Answer a service's refusal and any HTTP error of `bp`'s pages with `template`."""

    @bp.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Any:
        return render_template(template, status=exc.status, message=exc.message), exc.status

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        return render_template(template, status=status, message=exc.description), status


def init_pages(app: Flask) -> None:
    """Give the app its session cookie settings (read now, so bad values stop the start)."""
    settings = get_page_settings()
    app.secret_key = settings.session_key
    # Cookies signed before WEBHOOKS_SECRET_KEY was rotated stay valid (Flask 3.1).
    app.config["SECRET_KEY_FALLBACKS"] = list(settings.previous_session_keys)
    app.session_interface = PageSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="webhooks_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_seconds),
    )
    # Globals, not context: macros imported without context use them too.
    app.jinja_env.globals.update(csrf_token=csrf_token, CSRF_FIELD=CSRF_FIELD)


def csrf_token() -> str:
    """Return this page's CSRF token: the portal link's, or the session's (made on first use)."""
    portal_token = g.get("portal_csrf")
    if portal_token:
        return str(portal_token)
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf(expected: str | None = None, *also: str) -> None:
    """Refuse (400) a POST whose form does not carry the expected token (or one of `also`)."""
    if request.method != "POST":
        return
    expected = expected if expected is not None else session.get("csrf")
    sent = request.form.get(CSRF_FIELD, "").encode()
    # As bytes: compare_digest refuses str holding anything beyond ASCII (a TypeError, a 500).
    tokens = [t.encode() for t in (expected, *also) if isinstance(t, str)]
    if not sent or not any([hmac.compare_digest(sent, token) for token in tokens]):
        abort(400, "the form's CSRF token is missing or wrong; reload the page and try again")


def check_storable() -> None:
    """Refuse (400) a request whose query or form holds text no text column of PostgreSQL can
    store (a NUL character), as the API's JSON reader refuses it (api.common.unstorable)."""
    for values in (request.args, request.form):
        for key, value in values.items(multi=True):
            reason = unstorable([key, value])
            if reason:
                abort(400, f"the field {key[:40]!r}: {reason}")


def spend(tenant_id: uuid.UUID, cost: int = 1, force: bool = False) -> None:
    """Count an action that makes events or sends deliveries again (a test event, a retry, a
    replay) against the tenant's rate limit, as the API counts it; refuse it (429) if the
    tenant's budget is spent. `force` counts it even past the limit (what was done is done)."""
    if cost <= 0:
        return
    state = ratelimit.spend(tenant_id, tenants.rate_limit_of(db(), tenant_id), cost, force)
    if not state.allowed:
        wait = max(1, math.ceil(state.reset_in))
        abort(429, f"too many requests for this tenant (limit {state.limit}); retry in {wait} s")


def budget(tenant_id: uuid.UUID) -> int | None:
    """What the tenant may still spend in this window (None: no limit)."""
    return ratelimit.remaining(tenant_id, tenants.rate_limit_of(db(), tenant_id))


def signin_allowed() -> bool:
    """Count this sign-in attempt against the client's address; False once over the limit.

    The API's own counter (webhooks.ratelimit): one Redis round trip, in process memory while
    Redis is away, never a failed sign-in because of it."""
    limit = parse_limit("WEBHOOKS_CONSOLE_SIGNIN_LIMIT", get_page_settings().signin_limit)
    return ratelimit.count(f"signin:{request.remote_addr or 'unknown'}", 1, limit).allowed


def secure_headers(response: Response, frame_ancestors: str = "'none'", img: str = "") -> Response:
    """Set the headers every page carries: no script at all, nothing from elsewhere."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'none'; style-src 'self'; "
        f"img-src 'self' data:{' ' + img if img else ''}; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {frame_ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if frame_ancestors == "'none'":
        response.headers["X-Frame-Options"] = "DENY"
    # Pages show secrets and delivery data: keep them out of shared and browser caches.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def form_list(value: str) -> list[str]:
    """Split a text field of names separated by commas, spaces or lines."""
    return [part for part in value.replace(",", " ").split() if part]


def flat_errors(messages: Any, name: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into a list of texts per top-level field."""
    out: dict[str, list[str]] = {}

    def walk(value: Any, field: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, field or str(key))
        elif isinstance(value, list):
            for inner in value:
                walk(inner, field)
        else:
            out.setdefault(field, []).append(str(value))

    walk(messages, name)
    return out
