"""Portal pages. The link's token is the first part of every path: each view opens it, and
finds only that consumer's endpoints and deliveries, through the same services as the API."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from marshmallow import ValidationError

from config.pages import get_page_settings
from webhooks.api.common import db
from webhooks.console import web
from webhooks.schemas import SubscriptionCreateSchema, SubscriptionUpdateSchema
from webhooks.services import ServiceError, portal, queries, recovery
from webhooks.services import subscriptions as subscription_service
from webhooks.services.test_events import send_test_event

bp = Blueprint("portal", __name__, url_prefix="/portal", template_folder="templates")

create_schema = SubscriptionCreateSchema()
update_schema = SubscriptionUpdateSchema()
# Flash messages live in the session cookie, which an iframe on another site may not keep:
# the portal says what happened on the page it answers with instead.
PUBLIC = {"portal.theme"}


@bp.url_value_preprocessor
def _pull_token(endpoint: str | None, values: dict[str, Any] | None) -> None:
    g.portal_token = (values or {}).pop("token", None)


@bp.url_defaults
def _add_token(endpoint: str, values: dict[str, Any]) -> None:
    token = g.get("portal_token")
    if (
        token
        and "token" not in values
        and current_app.url_map.is_endpoint_expecting(endpoint, "token")
    ):
        values["token"] = token


@bp.before_request
def _open_link() -> None:
    if request.endpoint in PUBLIC:
        return
    token = g.portal_token or ""
    g.visitor = portal.open_link(db(), token)
    g.tenant_id = g.visitor.tenant_id
    # The link is the credential, and an attacker's page cannot read it: a token derived from
    # it proves a form came from a page of this portal.
    settings = get_page_settings()
    g.portal_csrf = _csrf_of(settings.session_key, token)
    # A page rendered before WEBHOOKS_SECRET_KEY was rotated carries one of a previous key.
    previous = [_csrf_of(key, token) for key in settings.previous_session_keys]
    web.check_csrf(g.portal_csrf, *previous)
    web.check_storable()


def _csrf_of(key: bytes, token: str) -> str:
    return hmac.new(key, b"portal csrf " + token.encode(), hashlib.sha256).hexdigest()


@bp.context_processor
def _context() -> dict[str, Any]:
    settings = get_page_settings()
    return {"visitor": g.get("visitor"), "brand": settings}


@bp.after_request
def _headers(response: Response) -> Response:
    settings = get_page_settings()
    logo = urlsplit(settings.portal_logo_url)
    img = f"{logo.scheme}://{logo.netloc}" if settings.portal_logo_url else ""
    return web.secure_headers(response, frame_ancestors=settings.portal_frame_ancestors, img=img)


web.error_pages(bp, "portal/error.html")


def _visitor() -> portal.Visitor:
    return g.visitor


@bp.get("/theme.css")
def theme() -> Response:
    # The accent colour from the environment; validated as #rrggbb in config.pages.
    css = f":root {{ --accent: {get_page_settings().portal_accent}; }}\n"
    response = Response(css, mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/<token>/")
def endpoints() -> Any:
    items = portal.endpoints(db(), _visitor())
    return render_template("portal/endpoints.html", endpoints=items)


def _form() -> dict[str, Any]:
    chosen = request.form.getlist("event_type") + web.form_list(request.form.get("event_types", ""))
    return {
        "url": request.form.get("url", "").strip(),
        "event_types": sorted(set(chosen)),
        "description": request.form.get("description", "").strip() or None,
    }


def _form_page(template: str, status: int = 200, **context: Any) -> Any:
    context.setdefault("form", {})
    context.setdefault("errors", {})
    context["catalogue"] = portal.catalogue(db(), _visitor().tenant_id)
    return render_template(template, **context), status


@bp.get("/<token>/endpoints/new")
def new_endpoint() -> Any:
    return _form_page("portal/endpoint_new.html")


@bp.post("/<token>/endpoints")
def create_endpoint() -> Any:
    form = _form()
    try:
        data = create_schema.load(form)
    except ValidationError as exc:
        return _form_page(
            "portal/endpoint_new.html", 422, form=form, errors=web.flat_errors(exc.messages)
        )
    data["consumer"] = _visitor().uid
    try:
        subscription, secret = subscription_service.create(db(), _visitor().tenant_id, data)
    except ServiceError as exc:  # the address guard refused the URL
        errors = web.flat_errors(exc.details.get("fields") or {"": [exc.message]})
        return _form_page("portal/endpoint_new.html", 422, form=form, errors=errors)
    return _endpoint_page(subscription.id, secret=secret, created=True)


def _endpoint_page(subscription_id: uuid.UUID, status: int = 200, **extra: Any) -> Any:
    session = db()
    subscription = portal.endpoint(session, _visitor(), subscription_id)
    where = queries.DeliveryFilter(
        subscription_id=subscription.id, consumer_id=_visitor().consumer_id
    )
    page = queries.deliveries(session, _visitor().tenant_id, where, request.args.get("after"))
    context: dict[str, Any] = {
        "subscription": subscription,
        "page": page,
        "secret": None,
        "created": False,
        "notice": None,
    }
    context.update(extra)
    return _form_page("portal/endpoint.html", status, **context)


@bp.get("/<token>/endpoints/<uuid:subscription_id>")
def endpoint(subscription_id: uuid.UUID) -> Any:
    return _endpoint_page(subscription_id)


@bp.post("/<token>/endpoints/<uuid:subscription_id>/edit")
def edit_endpoint(subscription_id: uuid.UUID) -> Any:
    portal.endpoint(db(), _visitor(), subscription_id)
    form = _form()
    try:
        data = update_schema.load(form, partial=True)
        subscription_service.update_one(db(), _visitor().tenant_id, subscription_id, data)
    except ValidationError as exc:
        return _endpoint_page(subscription_id, 422, form=form, errors=web.flat_errors(exc.messages))
    except ServiceError as exc:
        if exc.status == 404:
            raise
        errors = web.flat_errors(exc.details.get("fields") or {"": [exc.message]})
        return _endpoint_page(subscription_id, 422, form=form, errors=errors)
    return _endpoint_page(subscription_id, notice="Endpoint saved.")


@bp.post("/<token>/endpoints/<uuid:subscription_id>/delete")
def delete_endpoint(subscription_id: uuid.UUID) -> Any:
    portal.endpoint(db(), _visitor(), subscription_id)
    subscription_service.delete(db(), _visitor().tenant_id, subscription_id)
    return redirect(url_for("portal.endpoints"))


@bp.post("/<token>/endpoints/<uuid:subscription_id>/rotate-secret")
def rotate_secret(subscription_id: uuid.UUID) -> Any:
    portal.endpoint(db(), _visitor(), subscription_id)
    _, secret = subscription_service.rotate_secret(db(), _visitor().tenant_id, subscription_id)
    if secret is None:  # Ed25519: the new public key is on the page, the private one never
        return _endpoint_page(
            subscription_id, notice="New signing key: verify with the public key shown."
        )
    return _endpoint_page(subscription_id, secret=secret)


@bp.post("/<token>/endpoints/<uuid:subscription_id>/test")
def test_event(subscription_id: uuid.UUID) -> Any:
    portal.endpoint(db(), _visitor(), subscription_id)
    # A link is held by a third party: what it makes counts against the tenant's budget.
    web.spend(_visitor().tenant_id)
    delivery = send_test_event(db(), _visitor().tenant_id, subscription_id)
    return redirect(url_for("portal.delivery", delivery_id=delivery.id))


@bp.get("/<token>/deliveries")
def deliveries() -> Any:
    where = queries.DeliveryFilter(consumer_id=_visitor().consumer_id)
    page = queries.deliveries(db(), _visitor().tenant_id, where, request.args.get("after"))
    return render_template("portal/deliveries.html", page=page)


@bp.get("/<token>/deliveries/<uuid:delivery_id>")
def delivery(delivery_id: uuid.UUID) -> Any:
    view = portal.delivery(db(), _visitor(), delivery_id)
    return render_template("portal/delivery.html", view=view, notice=None)


@bp.post("/<token>/deliveries/<uuid:delivery_id>/retry")
def retry(delivery_id: uuid.UUID) -> Any:
    portal.delivery(db(), _visitor(), delivery_id)
    web.spend(_visitor().tenant_id)
    recovery.retry(db(), _visitor().tenant_id, delivery_id)
    view = portal.delivery(db(), _visitor(), delivery_id)
    return render_template("portal/delivery.html", view=view, notice="Delivery sent again.")
