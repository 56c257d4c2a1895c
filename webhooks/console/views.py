"""Console pages. Each view checks the session's tenant, calls a service and renders."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from marshmallow import ValidationError

from config.pages import get_page_settings
from webhooks.api.common import db
from webhooks.console import charts, examples
from webhooks.console.web import (
    budget,
    check_csrf,
    check_storable,
    error_pages,
    flat_errors,
    form_list,
    secure_headers,
    signin_allowed,
    spend,
)
from webhooks.models import DeliveryStatus
from webhooks.schemas import SubscriptionCreateSchema, SubscriptionUpdateSchema
from webhooks.services import ServiceError, lanes, queries, recovery, signin, stats
from webhooks.services import subscriptions as subscription_service
from webhooks.services.test_events import send_test_event

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

create_schema = SubscriptionCreateSchema()
update_schema = SubscriptionUpdateSchema()
PUBLIC = {"console.sign_in", "console.static"}
STATUSES = [s.value for s in DeliveryStatus]


@bp.context_processor
def _globals() -> dict[str, Any]:
    return {"operator": g.get("operator")}


@bp.before_request
def _authenticate() -> Any:
    check_csrf()
    check_storable()
    if request.endpoint in PUBLIC:
        return None
    key_id = session.get("key_id")
    started = session.get("signed_in_at", 0)
    expired = time.time() - started > get_page_settings().session_seconds
    operator = None
    if key_id and not expired:
        try:
            operator = signin.operator(db(), uuid.UUID(key_id))
        except ValueError:
            operator = None
    if operator is not None and operator.session_generation != session.get("generation"):
        operator = None  # signed out since this cookie was made: it is dead, even if copied
    if operator is None:
        session.pop("key_id", None)
        if request.method != "GET":
            abort(401)
        return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
    g.operator = operator
    g.tenant_id = operator.tenant_id
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    return secure_headers(response)


error_pages(bp, "console/error.html")


def _tenant() -> uuid.UUID:
    return g.operator.tenant_id


def _safe_next(target: str | None) -> str:
    # Only a path of the console: never an absolute or protocol-relative URL (open redirect),
    # nor one a Location header cannot carry (control characters) or a browser might read
    # otherwise (backslashes).
    if target and target.startswith("/console") and target.isprintable() and "\\" not in target:
        return target
    return url_for("console.overview")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    error = None
    status = 200
    if request.method == "POST":
        if not signin_allowed():
            error, status = "Too many sign-in attempts from your address; wait a minute.", 429
        else:
            operator = signin.sign_in(db(), request.form.get("api_key", "").strip())
            if operator is None:
                error, status = "That API key is not valid.", 401
            else:
                session.clear()  # a fresh session: nothing from before sign-in carries over
                session["csrf"] = secrets.token_urlsafe(32)
                session["key_id"] = str(operator.key_id)
                session["generation"] = operator.session_generation
                session["signed_in_at"] = time.time()
                session.permanent = True
                return redirect(_safe_next(request.form.get("next")))
    return render_template(
        "console/sign_in.html", error=error, next=request.values.get("next", "")
    ), status


@bp.post("/sign-out")
def sign_out() -> Any:
    # The cookie is the browser's: clearing it is not enough against a copy of it. Signing out
    # ends every console session of this API key (signin.sign_out).
    signin.sign_out(db(), g.operator.key_id)
    db().commit()
    session.clear()
    flash("Signed out.")
    return redirect(url_for("console.sign_in"))


@bp.get("/")
def overview() -> Any:
    data = stats.overview(db(), _tenant())
    labels = [m.at.strftime("%H:%M") for m in data.minutes]
    volume = charts.stacked_bars(
        "Attempts per minute",
        labels,
        [
            ("success", [m.successes for m in data.minutes]),
            ("failure", [m.attempts - m.successes for m in data.minutes]),
        ],
        "attempts",
    )
    events = charts.stacked_bars(
        "Events per minute", labels, [("events", [m.events for m in data.minutes])], "events"
    )
    latency = charts.lines(
        "Attempt duration per minute",
        labels,
        [("p50", [m.p50_ms for m in data.minutes]), ("p95", [m.p95_ms for m in data.minutes])],
        "ms",
    )
    return render_template("console/overview.html", data=data, charts=[events, volume, latency])


@bp.get("/subscriptions")
def subscriptions() -> Any:
    page = queries.subscriptions(db(), _tenant(), request.args.get("after"))
    ids = [s.id for s in page.items]
    return render_template(
        "console/subscriptions.html",
        page=page,
        rates=stats.success_rates(db(), ids),
        circuits=stats.circuits(ids),
        scheduling=stats.scheduling(page.items),
    )


def _subscription_form() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Read the subscription form; return the fields and the errors of fields not parsed."""
    form: dict[str, Any] = {
        "url": request.form.get("url", "").strip(),
        "event_types": form_list(request.form.get("event_types", "")),
        "description": request.form.get("description", "").strip() or None,
        "consumer": request.form.get("consumer", "").strip() or None,
        "channels": form_list(request.form.get("channels", "")),
        "filter": None,
        "ordering": request.form.get("ordering", "").strip() or "none",
    }
    errors: dict[str, list[str]] = {}
    for name in ("rate_limit", "max_in_flight"):
        raw = request.form.get(name, "").strip()
        if raw == "":
            if name == "rate_limit":
                form[name] = None  # no rate limit
            continue
        try:
            form[name] = int(raw)
        except ValueError:
            errors[name] = ["a whole number"]
            form[name + "_text"] = raw
    raw_filter = request.form.get("filter", "").strip()
    if raw_filter:
        try:
            form["filter"] = json.loads(raw_filter)
        except ValueError as exc:
            errors["filter"] = [f"not valid JSON: {exc}"]
        except RecursionError:
            errors["filter"] = ["nested too deeply"]
        form["filter_text"] = raw_filter
    return form, errors


def _load(schema: Any, form: dict[str, Any], errors: dict[str, list[str]], **kw: Any) -> Any:
    """Validate the form's fields with the API's schema; raise ValidationError naming all."""
    fields = {k: v for k, v in form.items() if not k.endswith("_text")}
    try:
        data = schema.load(fields, **kw)
    except ValidationError as exc:
        raise ValidationError(flat_errors(exc.messages) | errors) from None
    if errors:
        raise ValidationError(errors)
    return data


def _refused(exc: ServiceError) -> dict[str, list[str]]:
    """The fields a service refused (the address guard, an unknown consumer, a bad filter)."""
    return flat_errors(exc.details.get("fields") or {"": [exc.message]})


@bp.get("/subscriptions/new")
def new_subscription() -> Any:
    return render_template("console/subscription_new.html", form={}, errors={})


@bp.post("/subscriptions")
def create_subscription() -> Any:
    form, errors = _subscription_form()
    try:
        data = _load(create_schema, form, errors)
        subscription, secret = subscription_service.create(db(), _tenant(), data)
    except ValidationError as exc:
        errors = flat_errors(exc.messages)
    except ServiceError as exc:
        errors = _refused(exc)
    else:
        return _subscription_page(subscription.id, secret=secret, created=True)
    return render_template("console/subscription_new.html", form=form, errors=errors), 422


def _subscription_page(subscription_id: uuid.UUID, status: int = 200, **extra: Any) -> Any:
    session_ = db()
    subscription = subscription_service.get(session_, _tenant(), subscription_id)
    page = queries.attempts(session_, _tenant(), subscription.id, request.args.get("after"))
    context = {
        "subscription": subscription,
        "attempts": page,
        "circuit": stats.circuits([subscription.id])[subscription.id],
        "scheduling": stats.scheduling([subscription])[subscription.id],
        "day": stats.subscription_stats(session_, _tenant(), subscription.id, "24h"),
        "lanes": lanes.blocked(session_, subscription.id),
        "form": {},
        "errors": {},
        "secret": None,
        "created": False,
        "rotated": False,
    }
    context.update(extra)
    return render_template("console/subscription.html", **context), status


@bp.get("/subscriptions/<uuid:subscription_id>")
def subscription(subscription_id: uuid.UUID) -> Any:
    return _subscription_page(subscription_id)


@bp.post("/subscriptions/<uuid:subscription_id>/edit")
def edit_subscription(subscription_id: uuid.UUID) -> Any:
    subscription_service.get(db(), _tenant(), subscription_id)  # 404 before anything else
    form, errors = _subscription_form()
    try:
        data = _load(update_schema, form, errors, partial=True)
        subscription_service.update_one(db(), _tenant(), subscription_id, data)
    except ValidationError as exc:
        errors = flat_errors(exc.messages)
    except ServiceError as exc:
        if exc.status == 404:
            raise
        db().rollback()
        errors = _refused(exc)
    else:
        flash("Subscription saved.")
        return redirect(url_for("console.subscription", subscription_id=subscription_id))
    return _subscription_page(subscription_id, 422, form=form, errors=errors)


@bp.post("/subscriptions/<uuid:subscription_id>/status")
def set_status(subscription_id: uuid.UUID) -> Any:
    status = request.form.get("status")
    if status not in {"active", "disabled"}:
        abort(400, "status must be active or disabled")
    subscription_service.update_one(db(), _tenant(), subscription_id, {"status": status})
    flash("Subscription enabled." if status == "active" else "Subscription disabled.")
    return redirect(url_for("console.subscription", subscription_id=subscription_id))


@bp.post("/subscriptions/<uuid:subscription_id>/rotate-secret")
def rotate_secret(subscription_id: uuid.UUID) -> Any:
    subscription, secret = subscription_service.rotate_secret(db(), _tenant(), subscription_id)
    # Rendered in this answer only: never put in the session or a redirect. An Ed25519 key's
    # private half is never shown; its new public key is on the page.
    return _subscription_page(subscription.id, secret=secret, rotated=True)


@bp.post("/subscriptions/<uuid:subscription_id>/replay")
def replay(subscription_id: uuid.UUID) -> Any:
    since = _parse_time(request.form.get("since", ""))
    if since is None:
        abort(400, "give the time to replay from, as YYYY-MM-DDTHH:MM (UTC)")
    # One per delivery requeued, from the tenant's API budget, as the API's replay counts.
    left = budget(_tenant())
    if left == 0:
        spend(_tenant())  # refused: says when the budget comes back
    limit = None if left is None else min(recovery.REPLAY_LIMIT, left)
    count, more = recovery.replay(db(), _tenant(), subscription_id, since, None, None, limit)
    spend(_tenant(), count, force=True)
    flash(f"Requeued {count} deliveries." + (" More remain: replay again." if more else ""))
    return redirect(url_for("console.subscription", subscription_id=subscription_id))


@bp.post("/subscriptions/<uuid:subscription_id>/test")
def test_event(subscription_id: uuid.UUID) -> Any:
    spend(_tenant())
    delivery = send_test_event(db(), _tenant(), subscription_id)
    flash("Test event sent.")
    return redirect(url_for("console.delivery", delivery_id=delivery.id))


def _parse_time(value: str) -> datetime | None:
    """Read a form's date and time (datetime-local, taken as UTC), or None."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _delivery_filter() -> tuple[queries.DeliveryFilter, dict[str, str]]:
    args = request.args
    status = args.get("status", "")
    subscription = args.get("subscription", "").strip()
    try:
        subscription_id = uuid.UUID(subscription) if subscription else None
    except ValueError:
        subscription_id = None
        flash("The subscription filter is not an ID; it was left out.", "error")
    where = queries.DeliveryFilter(
        status=DeliveryStatus(status) if status in STATUSES else None,
        event_type=args.get("event_type", "").strip() or None,
        subscription_id=subscription_id,
        since=_parse_time(args.get("since", "")),
        until=_parse_time(args.get("until", "")),
        consumer_uid=args.get("consumer", "").strip() or None,
    )
    names = ("status", "event_type", "subscription", "consumer", "since", "until")
    kept = {k: args.get(k, "") for k in names}
    return where, {k: v for k, v in kept.items() if v}


@bp.get("/deliveries")
def deliveries() -> Any:
    where, kept = _delivery_filter()
    page = queries.deliveries(db(), _tenant(), where, request.args.get("after"))
    return render_template("console/deliveries.html", page=page, filters=kept, statuses=STATUSES)


@bp.get("/deliveries/<uuid:delivery_id>")
def delivery(delivery_id: uuid.UUID) -> Any:
    view = queries.delivery(db(), _tenant(), delivery_id)
    return render_template("console/delivery.html", view=view)


@bp.post("/deliveries/<uuid:delivery_id>/retry")
def retry(delivery_id: uuid.UUID) -> Any:
    spend(_tenant())
    recovery.retry(db(), _tenant(), delivery_id)
    flash("Delivery sent again.")
    return redirect(url_for("console.delivery", delivery_id=delivery_id))


@bp.get("/dead-letters")
def dead_letters() -> Any:
    where = queries.DeliveryFilter(status=DeliveryStatus.FAILED)
    page = queries.deliveries(db(), _tenant(), where, request.args.get("after"))
    return render_template("console/dead_letters.html", page=page)


@bp.post("/dead-letters/retry")
def retry_dead_letters() -> Any:
    chosen = request.form.getlist("all" if request.form.get("scope") == "all" else "id")
    chosen = chosen[: queries.MAX_PAGE]
    # Each one sent again costs one, as the API's retry does.
    spend(_tenant(), len(chosen))
    done, refused = 0, []
    for raw in chosen:
        try:
            recovery.retry(db(), _tenant(), uuid.UUID(raw))
            done += 1
        except (ValueError, ServiceError) as exc:
            db().rollback()
            refused.append(f"{raw[:36]}: {getattr(exc, 'message', 'not a delivery ID')}")
    flash(f"Sent again: {done}." if done else "Nothing was selected to send again.")
    for reason in refused[:10]:
        flash(reason, "error")
    return redirect(url_for("console.dead_letters"))


@bp.get("/events/<uuid:event_id>")
def event(event_id: uuid.UUID) -> Any:
    found, rows = queries.event(db(), _tenant(), event_id)
    payload = json.dumps(found.payload, indent=2, ensure_ascii=False, sort_keys=True)
    return render_template("console/event.html", event=found, payload=payload, rows=rows)


@bp.get("/event-types")
def event_types() -> Any:
    rows = []
    for item in queries.event_types(db(), _tenant()):
        shown = item.schema is not None
        rows.append(
            {
                "type": item,
                "schema": json.dumps(item.schema, indent=2, sort_keys=True) if shown else None,
                "example": json.dumps(examples.example(item.schema), indent=2, ensure_ascii=False)
                if shown
                else None,
            }
        )
    return render_template("console/event_types.html", rows=rows)
