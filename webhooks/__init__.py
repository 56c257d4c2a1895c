"""The Flask app: `flask --app webhooks ...`, gunicorn `webhooks.wsgi:app`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from config import get_settings
from webhooks.logs import configure_logging

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A portal link's token signs its holder in: it never goes into a log line.
_PORTAL_TOKEN = re.compile(r"^/portal/[^/]+/")
access_log = logging.getLogger("webhooks.access")


# Methods a request may name as they are; any other becomes OTHER (answered 405), so that no
# client can make a new label value of the request metrics, or of the access log, per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _KnownMethods:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") not in METHODS:
            environ["REQUEST_METHOD"] = "OTHER"
        return self.app(environ, start_response)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; every setting comes from the environment (config/)."""
    configure_logging()
    settings = get_settings()
    app = Flask(__name__)
    app.config.update(
        # A backstop for bodies without Content-Length; each view applies its own limit.
        MAX_CONTENT_LENGTH=max(settings.max_payload_bytes, 1 << 20) + (64 << 10),
    )
    if test_config:
        app.config.update(test_config)
    app.wsgi_app = _KnownMethods(app.wsgi_app)  # type: ignore[method-assign]
    if settings.proxy_hops:
        # Behind proxies, the client is the address they forward: without this every client
        # would share the proxy's address, and so its per-address limits (WEBHOOKS_PROXY_HOPS
        # trusts exactly that many: a header a client wrote itself is not believed).
        # X-Forwarded-Host is not read: many proxies pass a client's own through unchanged
        # (portal links take their host from WEBHOOKS_PUBLIC_URL behind a proxy).
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the schemas' order

    from webhooks import console, portal
    from webhooks.api import (
        consumers,
        deliveries,
        event_types,
        events,
        health,
        portal_links,
        subscriptions,
    )
    from webhooks.api.common import close_db, register_error_handlers
    from webhooks.cli import register_commands
    from webhooks.console.web import init_pages
    from webhooks.exporter import expose_metrics
    from webhooks.openapi import init_api

    init_api(
        app,
        [
            consumers.bp,
            portal_links.bp,
            event_types.bp,
            subscriptions.bp,
            events.bp,
            deliveries.bp,
            health.bp,
        ],
    )
    init_pages(app)
    for blueprint in (console.bp, portal.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)  # after flask-smorest's: every error keeps the envelope
    register_commands(app)
    app.teardown_appcontext(close_db)
    expose_metrics(app)

    @app.before_request
    def _tag_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        access_log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": _PORTAL_TOKEN.sub("/portal/<token>/", request.path),
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 2),
                "tenant_id": str(g.get("tenant_id")) if g.get("tenant_id") else None,
            },
        )
        return response

    from webhooks.ratelimit import init_rate_limiting

    init_rate_limiting(app)  # last: its checks run after the request ID is set
    return app
