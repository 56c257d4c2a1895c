"""The operator console through Flask's test client: sign-in, CSRF, every page and action, tenant
scoping, escaping, and the stats API behind it (real PostgreSQL and Redis)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.conftest import publish, subscribe
from tests.support import SCRIPT, add_attempt, csrf_of, set_status, sql
from webhooks.db import get_engine
from webhooks.services.stats import _SUBSCRIPTION_STATS

TEMPLATES = Path(__file__).resolve().parents[2] / "webhooks" / "console" / "templates"


def sign_in(client: Any, key: str, **kwargs: Any) -> Any:
    page = client.get("/console/sign-in", **kwargs)
    token = csrf_of(page.get_data(as_text=True))
    return client.post("/console/sign-in", data={"api_key": key, "csrf_token": token}, **kwargs)


def signed_in(client: Any, tenant: dict[str, Any]) -> str:
    """Sign the client in; return the session's CSRF token."""
    assert sign_in(client, tenant["key"]).status_code == 302
    return csrf_of(client.get("/console/subscriptions").get_data(as_text=True))


@pytest.fixture
def world(client: Any, tenant: dict[str, Any], other_tenant: dict[str, Any]) -> dict[str, Any]:
    """Each tenant with a subscription, an event (its payload holds a script tag) and a delivery
    with a failed attempt whose response body holds one too."""
    out: dict[str, Any] = {}
    for name, who in (("mine", tenant), ("theirs", other_tenant)):
        sub = subscribe(client, who, "http://127.0.0.1:9/hook", ["order.created"])
        event = publish(client, who, "order.created", {"note": SCRIPT}).get_json()
        detail = client.get(f"/v1/events/{event['id']}", headers=who["headers"]).get_json()
        delivery_id = detail["deliveries"][0]["id"]
        add_attempt(delivery_id, 1, "http_error", 500, 12.5, body=SCRIPT)
        set_status("failed", delivery_id)
        out[name] = {"sub": sub, "event": event, "delivery": delivery_id, "headers": who["headers"]}
    return out


def test_pages_send_a_visitor_without_a_session_to_sign_in(client: Any) -> None:
    for path in ("/console/", "/console/subscriptions", "/console/dead-letters"):
        answer = client.get(path)
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/console/sign-in?next=")
    assert client.get("/console").status_code in (301, 308)


def test_sign_in_sets_an_http_only_lax_cookie_with_an_expiry(client: Any, tenant: Any) -> None:
    answer = sign_in(client, tenant["key"])
    assert answer.status_code == 302 and answer.headers["Location"] == "/console/"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("webhooks_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert tenant["key"] not in cookie
    page = client.get("/console/").get_data(as_text=True)
    assert "acme" in page and "Sign out" in page


def test_the_cookie_is_secure_under_https(app: Any, tenant: Any) -> None:
    client = app.test_client()
    answer = sign_in(client, tenant["key"], base_url="https://localhost")
    assert answer.status_code == 302
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_key_does_not_sign_in(client: Any, tenant: Any) -> None:
    answer = sign_in(client, tenant["key"] + "x")
    assert answer.status_code == 401
    assert "not valid" in answer.get_data(as_text=True)
    assert client.get("/console/").status_code == 302


def test_a_form_without_its_csrf_token_is_refused(client: Any, tenant: Any, world: Any) -> None:
    client.get("/console/sign-in")
    refused = client.post("/console/sign-in", data={"api_key": tenant["key"]})
    assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)
    signed_in(client, tenant)
    sub = world["mine"]["sub"]["id"]
    for path in (
        f"/console/subscriptions/{sub}/rotate-secret",
        f"/console/subscriptions/{sub}/status",
        f"/console/deliveries/{world['mine']['delivery']}/retry",
        "/console/sign-out",
    ):
        answer = client.post(path, data={"status": "disabled", "csrf_token": "forged"})
        assert answer.status_code == 400, path
    state = client.get(f"/v1/subscriptions/{sub}", headers=tenant["headers"]).get_json()
    assert state["status"] == "active"
    assert client.get("/console/").status_code == 200  # still signed in


def test_sign_in_attempts_are_limited_per_client_address(
    app: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOKS_CONSOLE_SIGNIN_LIMIT", "3/minute")
    client = app.test_client()
    here = {"environ_base": {"REMOTE_ADDR": "192.0.2.7"}}
    for _ in range(3):
        assert sign_in(client, "whk_wrong", **here).status_code == 401
    assert sign_in(client, tenant["key"], **here).status_code == 429
    elsewhere = {"environ_base": {"REMOTE_ADDR": "192.0.2.8"}}
    assert sign_in(app.test_client(), tenant["key"], **elsewhere).status_code == 302


def test_sign_out_ends_the_session(client: Any, tenant: Any) -> None:
    token = signed_in(client, tenant)
    assert client.post("/console/sign-out", data={"csrf_token": token}).status_code == 302
    assert client.get("/console/").status_code == 302


def test_revoking_the_key_ends_its_sessions(client: Any, tenant: Any) -> None:
    signed_in(client, tenant)
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE api_keys SET revoked_at = now()"))
    assert client.get("/console/").status_code == 302


def test_a_session_older_than_its_lifetime_is_over(
    client: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in(client, tenant)
    with client.session_transaction() as session:
        session["signed_in_at"] -= 3600
    monkeypatch.setenv("WEBHOOKS_CONSOLE_SESSION_SECONDS", "600")
    assert client.get("/console/").status_code == 302


def test_sign_in_returns_only_to_a_console_path(client: Any, tenant: Any) -> None:
    for target, expected in (
        ("/console/dead-letters", "/console/dead-letters"),
        ("https://evil.example/", "/console/"),
        ("//evil.example/console", "/console/"),
    ):
        token = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
        answer = client.post(
            "/console/sign-in",
            data={"api_key": tenant["key"], "csrf_token": token, "next": target},
        )
        assert answer.headers["Location"] == expected


def test_signing_in_gives_a_new_csrf_token(client: Any, tenant: Any) -> None:
    before = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    client.post("/console/sign-in", data={"api_key": tenant["key"], "csrf_token": before})
    after = csrf_of(client.get("/console/").get_data(as_text=True))
    assert after != before


def test_every_page_renders_the_tenants_data(client: Any, tenant: Any, world: Any) -> None:
    signed_in(client, tenant)
    mine, theirs = world["mine"], world["theirs"]
    pages = {
        "/console/": ["Events/s", "<svg"],
        "/console/subscriptions": ["http://127.0.0.1:9/hook", "Success 24 h"],
        f"/console/subscriptions/{mine['sub']['id']}": ["Rotate secret", "http_error", "Ordering"],
        "/console/deliveries": [mine["delivery"][:8]],
        "/console/deliveries?status=failed&event_type=order.created": [mine["delivery"][:8]],
        f"/console/deliveries/{mine['delivery']}": ["HTTP 500", "Retry"],
        "/console/dead-letters": [mine["delivery"][:8], "Retry selected"],
        f"/console/events/{mine['event']['id']}": ["order.created", "&#34;note&#34;"],
    }
    for path, expected in pages.items():
        answer = client.get(path)
        assert answer.status_code == 200, path
        html = answer.get_data(as_text=True)
        for piece in expected:
            assert piece in html, (path, piece)
        assert theirs["delivery"][:13] not in html, path
        assert theirs["sub"]["id"] not in html, path


def test_filters_narrow_the_deliveries(client: Any, tenant: Any, world: Any) -> None:
    signed_in(client, tenant)
    mine = world["mine"]["delivery"][:13]
    for query, shown in (
        ("status=delivered", False),
        ("status=failed", True),
        ("event_type=order.paid", False),
        (f"subscription={world['mine']['sub']['id']}", True),
        (f"subscription={uuid.uuid4()}", False),
        ("since=2999-01-01T00:00", False),
        ("until=2000-01-01T00:00", False),
        ("since=2000-01-01T00:00&until=2999-01-01T00:00", True),
    ):
        html = client.get(f"/console/deliveries?{query}").get_data(as_text=True)
        assert (mine in html) is shown, query


def test_another_tenants_resources_answer_404(client: Any, tenant: Any, world: Any) -> None:
    token = signed_in(client, tenant)
    theirs = world["theirs"]
    sub, delivery, event = theirs["sub"]["id"], theirs["delivery"], theirs["event"]["id"]
    for path in (
        f"/console/subscriptions/{sub}",
        f"/console/deliveries/{delivery}",
        f"/console/events/{event}",
    ):
        assert client.get(path).status_code == 404, path
    for path, data in (
        (f"/console/subscriptions/{sub}/rotate-secret", {}),
        (f"/console/subscriptions/{sub}/status", {"status": "disabled"}),
        (f"/console/subscriptions/{sub}/replay", {"since": "2000-01-01T00:00"}),
        (f"/console/subscriptions/{sub}/test", {}),
        (f"/console/subscriptions/{sub}/edit", {"url": "http://127.0.0.1:9/x", "event_types": "*"}),
        (f"/console/deliveries/{delivery}/retry", {}),
    ):
        answer = client.post(path, data={"csrf_token": token, **data})
        assert answer.status_code == 404, path
    # Retrying another tenant's dead letter by ID does nothing.
    client.post("/console/dead-letters/retry", data={"csrf_token": token, "id": delivery})
    detail = client.get(f"/v1/deliveries/{delivery}", headers=theirs["headers"])
    assert detail.get_json()["status"] == "failed"


def test_script_tags_from_payloads_and_responses_render_as_text(
    client: Any, tenant: Any, world: Any
) -> None:
    signed_in(client, tenant)
    for path in (
        f"/console/deliveries/{world['mine']['delivery']}",
        f"/console/events/{world['mine']['event']['id']}",
    ):
        answer = client.get(path)
        html = answer.get_data(as_text=True)
        assert "<script" not in html, path
        assert "&lt;script&gt;" in html, path
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Cache-Control"] == "no-store"


def test_no_template_turns_escaping_off() -> None:
    for path in TEMPLATES.rglob("*.html"):
        source = path.read_text()
        for unsafe in ("|safe", "| safe", "autoescape false", "Markup("):
            assert unsafe not in source, (path.name, unsafe)


def test_a_subscription_is_created_with_its_secret_shown_once(client: Any, tenant: Any) -> None:
    token = signed_in(client, tenant)
    refused = client.post(
        "/console/subscriptions",
        data={"csrf_token": token, "url": "ftp://x", "event_types": "bad type!"},
    )
    assert refused.status_code == 422
    assert "field-error" in refused.get_data(as_text=True)
    created = client.post(
        "/console/subscriptions",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/new", "event_types": "a.b, c.d"},
    )
    assert created.status_code == 200
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', created.get_data(as_text=True))
    assert secret
    listed = client.get("/v1/subscriptions", headers=tenant["headers"]).get_json()["data"]
    assert [(s["url"], s["event_types"]) for s in listed] == [
        ("http://127.0.0.1:9/new", ["a.b", "c.d"])
    ]
    again = client.get(f"/console/subscriptions/{listed[0]['id']}").get_data(as_text=True)
    assert secret.group(1) not in again


def test_rotating_shows_the_new_secret_once(client: Any, tenant: Any, world: Any) -> None:
    token = signed_in(client, tenant)
    sub = world["mine"]["sub"]
    answer = client.post(
        f"/console/subscriptions/{sub['id']}/rotate-secret", data={"csrf_token": token}
    )
    html = answer.get_data(as_text=True)
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', html)
    assert answer.status_code == 200 and secret and secret.group(1) != sub["secret"]
    assert secret.group(1) not in client.get(f"/console/subscriptions/{sub['id']}").get_data(
        as_text=True
    )
    with client.session_transaction() as session:
        assert secret.group(1) not in str(dict(session))


def test_disable_enable_edit_and_replay(client: Any, tenant: Any, world: Any) -> None:
    token = signed_in(client, tenant)
    sub = world["mine"]["sub"]["id"]
    api = f"/v1/subscriptions/{sub}"
    client.post(
        f"/console/subscriptions/{sub}/status", data={"csrf_token": token, "status": "disabled"}
    )
    assert client.get(api, headers=tenant["headers"]).get_json()["status"] == "disabled"
    refused = client.post(f"/console/subscriptions/{sub}/test", data={"csrf_token": token})
    assert refused.status_code == 409
    client.post(
        f"/console/subscriptions/{sub}/status", data={"csrf_token": token, "status": "active"}
    )
    assert client.get(api, headers=tenant["headers"]).get_json()["status"] == "active"

    bad = client.post(
        f"/console/subscriptions/{sub}/edit",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/hook", "event_types": "no spaces!"},
    )
    assert bad.status_code == 422
    client.post(
        f"/console/subscriptions/{sub}/edit",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/v2", "event_types": "x.y *"},
    )
    changed = client.get(api, headers=tenant["headers"]).get_json()
    assert changed["url"] == "http://127.0.0.1:9/v2" and changed["event_types"] == ["*", "x.y"]

    answer = client.post(
        f"/console/subscriptions/{sub}/replay",
        data={"csrf_token": token, "since": "2000-01-01T00:00"},
        follow_redirects=True,
    )
    assert "Requeued 1 deliveries." in answer.get_data(as_text=True)
    delivery = client.get(f"/v1/deliveries/{world['mine']['delivery']}", headers=tenant["headers"])
    assert delivery.get_json()["status"] == "pending"


def test_a_test_event_goes_to_that_subscription_only(client: Any, tenant: Any, world: Any) -> None:
    token = signed_in(client, tenant)
    other = subscribe(client, tenant, "http://127.0.0.1:9/other", ["*"])
    sub = world["mine"]["sub"]["id"]
    answer = client.post(f"/console/subscriptions/{sub}/test", data={"csrf_token": token})
    assert answer.status_code == 302
    delivery_id = answer.headers["Location"].rsplit("/", 1)[-1]
    detail = client.get(f"/v1/deliveries/{delivery_id}", headers=tenant["headers"]).get_json()
    assert detail["subscription_id"] == sub and detail["status"] == "pending"
    page = client.get(f"/console/deliveries/{delivery_id}").get_data(as_text=True)
    assert "webhook.test" in page
    others = client.get(
        f"/v1/deliveries?subscription_id={other['id']}", headers=tenant["headers"]
    ).get_json()
    assert others["data"] == []


def test_retry_one_and_retry_selected_dead_letters(client: Any, tenant: Any, world: Any) -> None:
    token = signed_in(client, tenant)
    first = world["mine"]["delivery"]
    second = publish(client, tenant, "order.created", {"n": 2}).get_json()
    second_id = client.get(f"/v1/events/{second['id']}", headers=tenant["headers"]).get_json()[
        "deliveries"
    ][0]["id"]
    set_status("failed", second_id)

    def status(delivery_id: str) -> str:
        answer = client.get(f"/v1/deliveries/{delivery_id}", headers=tenant["headers"])
        return str(answer.get_json()["status"])

    client.post(f"/console/deliveries/{first}/retry", data={"csrf_token": token})
    assert status(first) == "pending" and status(second_id) == "failed"
    again = client.post(f"/console/deliveries/{first}/retry", data={"csrf_token": token})
    assert again.status_code == 409  # still in progress

    set_status("failed", first)
    answer = client.post(
        "/console/dead-letters/retry",
        data={
            "csrf_token": token,
            "scope": "selected",
            "id": [second_id],
            "all": [first, second_id],
        },
        follow_redirects=True,
    )
    assert "Sent again: 1." in answer.get_data(as_text=True)
    assert status(second_id) == "pending" and status(first) == "failed"
    set_status("failed", second_id)
    client.post(
        "/console/dead-letters/retry",
        data={"csrf_token": token, "scope": "all", "all": [first, second_id]},
    )
    assert status(first) == "pending" and status(second_id) == "pending"


def test_overview_counts_the_last_hour(client: Any, tenant: Any, world: Any) -> None:
    from webhooks.services.delivery import get_breaker

    signed_in(client, tenant)
    delivery = world["mine"]["delivery"]
    add_attempt(delivery, 2, "success", 200, 30.0)
    add_attempt(delivery, 3, "success", 200, 50.0, seconds_ago=7200)  # outside the hour
    breaker = get_breaker()
    for _ in range(breaker.threshold):
        breaker.record_failure(world["mine"]["sub"]["id"])
    breaker.record_failure(world["theirs"]["sub"]["id"])  # another tenant's: not counted
    html = client.get("/console/").get_data(as_text=True)
    assert re.search(r'id="success-rate">\s*50\.0 %', html), html
    assert 'id="backlog">0<' in html
    assert 'id="open-circuits">1<' in html
    assert 'id="events-per-second">0.00<' in html  # 1 event in an hour


# The stats API


def test_stats_count_attempts_by_result_over_the_window(
    client: Any, tenant: Any, world: Any
) -> None:
    delivery = world["mine"]["delivery"]  # holds one http_error of 12.5 ms
    for n, ms in enumerate((10.0, 20.0, 30.0, 40.0), start=2):
        add_attempt(delivery, n, "success", 200, ms)
    add_attempt(delivery, 6, "timeout", None, 3000.0, seconds_ago=2 * 3600)
    add_attempt(delivery, 7, "success", 200, 5.0, seconds_ago=3 * 86400)
    sub = world["mine"]["sub"]["id"]

    hour = client.get(f"/v1/subscriptions/{sub}/stats?window=1h", headers=tenant["headers"])
    assert hour.status_code == 200
    body = hour.get_json()
    assert body["window"] == "1h" and body["total"] == 5
    assert body["attempts"]["success"] == 4 and body["attempts"]["http_error"] == 1
    assert body["attempts"]["timeout"] == 0
    assert body["success_rate"] == pytest.approx(0.8)
    assert body["p50_ms"] == pytest.approx(20.0)
    assert body["p95_ms"] == pytest.approx(38.0)

    day = client.get(f"/v1/subscriptions/{sub}/stats?window=24h", headers=tenant["headers"])
    assert day.get_json()["total"] == 6 and day.get_json()["attempts"]["timeout"] == 1
    week = client.get(f"/v1/subscriptions/{sub}/stats?window=7d", headers=tenant["headers"])
    assert week.get_json()["total"] == 7


def test_stats_refuse_another_tenant_and_an_unknown_window(
    client: Any, tenant: Any, world: Any
) -> None:
    theirs = world["theirs"]["sub"]["id"]
    assert (
        client.get(f"/v1/subscriptions/{theirs}/stats", headers=tenant["headers"]).status_code
        == 404
    )
    mine = world["mine"]["sub"]["id"]
    answer = client.get(f"/v1/subscriptions/{mine}/stats?window=2h", headers=tenant["headers"])
    assert answer.status_code == 422
    empty = subscribe(client, tenant, "http://127.0.0.1:9/empty")
    none = client.get(
        f"/v1/subscriptions/{empty['id']}/stats", headers=tenant["headers"]
    ).get_json()
    assert none["total"] == 0 and none["success_rate"] is None and none["p50_ms"] is None


def test_stats_read_one_range_of_the_attempts_index(world: Any) -> None:
    sub = world["mine"]["sub"]["id"]
    with get_engine().begin() as conn:
        filled = conn.execute(text("SELECT count(*) FROM attempts WHERE subscription_id IS NULL"))
        assert filled.scalar_one() == 0  # the trigger filled every row
        # Tiny tables make any plan cheap; forbid the sequential scan to see the index applies.
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                text("EXPLAIN " + str(_SUBSCRIPTION_STATS)),
                {"subscription_id": sub, "since": "2000-01-01T00:00:00Z"},
            )
        )
    assert "ix_attempts_subscription_id_created_at" in plan, plan


def test_the_catalogue_shows_each_type_with_its_schema_and_an_example(
    client: Any, tenant: Any, other_tenant: Any
) -> None:
    signed_in(client, tenant)
    with get_engine().begin() as conn:
        for who, name, schema in (
            (
                tenant,
                "invoice.paid",
                '{"type": "object", "properties": {"total": {"type": "integer"}}}',
            ),
            (tenant, "user.<script>", None),
            (other_tenant, "secret.type", None),
        ):
            conn.execute(
                text(
                    "INSERT INTO event_types (id, tenant_id, name, schema)"
                    " VALUES (gen_random_uuid(), :t, :n, CAST(:s AS jsonb))"
                ),
                {"t": who["id"], "n": name, "s": schema},
            )
    html = client.get("/console/event-types").get_data(as_text=True)
    assert "invoice.paid" in html and "&#34;total&#34;: 0" in html
    assert "user.&lt;script&gt;" in html and "No schema" in html
    assert "secret.type" not in html


def test_upgrading_fills_the_subscription_of_existing_attempts(servers: Any) -> None:
    """A database at the routing revision with an attempt upgrades: the attempt gets its
    subscription; downgrading removes the column and its trigger, and upgrading works again."""
    from alembic import command

    from tests.support import alembic_config, scratch_database

    ids = {k: uuid.uuid4() for k in ("tenant", "sub", "event", "delivery")}
    with scratch_database(servers, "webhooks_console_upgrade") as engine:

        def attempt_then_upgrade(number: int) -> None:
            """Record an attempt as the routing revision's workers did (it has no subscription
            to fill in), then upgrade to head."""
            sql(
                "INSERT INTO attempts (delivery_id, number, result)"
                " VALUES (:delivery, :number, 'success')",
                engine=engine,
                delivery=ids["delivery"],
                number=number,
            )
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "head")

        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "20261130_0004")
            conn.execute(text("INSERT INTO tenants (id, name) VALUES (:tenant, 'old')"), ids)
            conn.execute(
                text(
                    "INSERT INTO subscriptions (id, tenant_id, url, event_types, status,"
                    " secret_ciphertext) VALUES (:sub, :tenant, 'http://x', '{*}', 'active', '')"
                ),
                ids,
            )
            conn.execute(
                text(
                    "INSERT INTO events (id, tenant_id, event_type, payload)"
                    " VALUES (:event, :tenant, 'a', '{}')"
                ),
                ids,
            )
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, tenant_id, event_id, subscription_id, status,"
                    " attempt_count, failures) VALUES (:delivery, :tenant, :event, :sub,"
                    " 'delivered', 1, 0)"
                ),
                ids,
            )
        attempt_then_upgrade(1)
        assert sql("SELECT subscription_id FROM attempts", engine=engine) == [(ids["sub"],)]
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "20261130_0004")
        columns = sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'attempts'",
            engine=engine,
        )
        assert "subscription_id" not in {name for (name,) in columns}
        attempt_then_upgrade(2)
        filled = sql(
            "SELECT count(*) FROM attempts WHERE subscription_id = :sub",
            engine=engine,
            sub=ids["sub"],
        )
        assert filled == [(2,)]


def test_the_filter_channels_and_consumer_are_edited_and_checked(
    client: Any, tenant: Any, world: Any
) -> None:
    token = signed_in(client, tenant)
    sub = world["mine"]["sub"]["id"]
    path = f"/console/subscriptions/{sub}/edit"
    form = {"csrf_token": token, "url": "http://127.0.0.1:9/hook", "event_types": "*"}
    for bad, message in (
        ({"filter": "{not json"}, "not valid JSON"),
        ({"filter": '{"amount": {"$between": 1}}'}, "$between"),
        ({"consumer": "nobody"}, "no such consumer"),
    ):
        answer = client.post(path, data={**form, **bad})
        assert answer.status_code == 422, bad
        assert message in answer.get_data(as_text=True), bad
    client.post("/v1/consumers", json={"uid": "c-1", "name": "C"}, headers=tenant["headers"])
    saved = client.post(
        path,
        data={**form, "filter": '{"amount": {"$gt": 100}}', "channels": "eu us", "consumer": "c-1"},
    )
    assert saved.status_code == 302
    state = client.get(f"/v1/subscriptions/{sub}", headers=tenant["headers"]).get_json()
    assert state["filter"] == {"amount": {"$gt": 100}}
    assert state["channels"] == ["eu", "us"] and state["consumer"] == "c-1"
    page = client.get(f"/console/subscriptions/{sub}").get_data(as_text=True)
    assert "$gt" in page and "c-1" in page


def test_an_event_page_names_its_consumer_and_channels(client: Any, tenant: Any) -> None:
    signed_in(client, tenant)
    client.post("/v1/consumers", json={"uid": "c-9", "name": "C"}, headers=tenant["headers"])
    event = client.post(
        "/v1/events",
        json={"event_type": "a.b", "payload": {}, "consumer": "c-9", "channels": ["eu"]},
        headers=tenant["headers"],
    ).get_json()
    html = client.get(f"/console/events/{event['id']}").get_data(as_text=True)
    assert "<dd>c-9</dd>" in html and "<dd>eu</dd>" in html


def test_subscription_limits_are_edited_in_the_console_and_shown_with_their_effective_value(
    client: Any, tenant: Any
) -> None:
    sub = subscribe(client, tenant, "http://127.0.0.1:9/limits", ["*"], max_in_flight=4)
    token = signed_in(client, tenant)
    assert "4 at once" in client.get(f"/console/subscriptions/{sub['id']}").get_data(as_text=True)
    assert "4 of 4" in client.get("/console/subscriptions").get_data(as_text=True)
    edit = f"/console/subscriptions/{sub['id']}/edit"
    form = {"csrf_token": token, "url": "http://127.0.0.1:9/limits", "event_types": "*"}
    bad = client.post(edit, data=form | {"max_in_flight": "many"})
    assert bad.status_code == 422
    assert (
        client.post(edit, data=form | {"max_in_flight": "2", "rate_limit": "7"}).status_code < 400
    )
    api = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert (api["max_in_flight"], api["rate_limit"]) == (2, 7)
    page = client.get(f"/console/subscriptions/{sub['id']}").get_data(as_text=True)
    assert "2 at once, 7/s" in page


def test_signing_out_kills_every_copy_of_the_keys_sessions(app: Any, tenant: Any) -> None:
    """The cookie is the browser's: sign-out must end the session itself, so a copy of the
    cookie taken before (or the same key signed in elsewhere) opens nothing after it."""
    client, elsewhere = app.test_client(), app.test_client()
    token = signed_in(client, tenant)
    signed_in(elsewhere, tenant)
    saved = client.get_cookie("webhooks_session").value
    assert client.post("/console/sign-out", data={"csrf_token": token}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("webhooks_session", saved)
    assert thief.get("/console/").status_code == 302
    assert elsewhere.get("/console/").status_code == 302
    signed_in(client, tenant)  # signing in again opens a new session
    assert client.get("/console/").status_code == 200


def test_a_csrf_token_beyond_ascii_is_refused_not_a_crash(client: Any, tenant: Any) -> None:
    client.get("/console/sign-in")
    refused = client.post("/console/sign-in", data={"api_key": "x", "csrf_token": "é"})
    assert refused.status_code == 400
    signed_in(client, tenant)
    assert client.post("/console/sign-out", data={"csrf_token": "é"}).status_code == 400
    assert client.get("/console/").status_code == 200  # still signed in


@pytest.mark.parametrize(
    ("method", "path", "fields"),
    [
        ("get", "/console/deliveries", {"event_type": "a\x00b"}),
        ("get", "/console/deliveries", {"consumer": "a\x00b"}),
        ("post", "/console/subscriptions", {"description": "a\x00b"}),
        ("post", "/console/subscriptions", {"url": "http://127.0.0.1:9/x\x00"}),
    ],
)
def test_a_nul_character_in_a_query_or_form_is_refused(
    client: Any, tenant: Any, method: str, path: str, fields: dict[str, str]
) -> None:
    token = signed_in(client, tenant)
    if method == "get":
        answer = client.get(path, query_string=fields)
    else:
        data = {"csrf_token": token, "url": "http://127.0.0.1:9/x", "event_types": "*"}
        answer = client.post(path, data=data | fields)
    assert answer.status_code == 400
    assert "NUL character" in answer.get_data(as_text=True)
    listed = client.get("/v1/subscriptions", headers=tenant["headers"]).get_json()
    assert listed["data"] == []


def test_a_filter_nested_too_deeply_is_a_form_error(client: Any, tenant: Any) -> None:
    token = signed_in(client, tenant)
    data = {
        "csrf_token": token,
        "url": "http://127.0.0.1:9/x",
        "event_types": "*",
        "filter": "[" * 100_000,
    }
    answer = client.post("/console/subscriptions", data=data)
    assert answer.status_code == 422
    assert "nested too deeply" in answer.get_data(as_text=True)


def test_sign_in_never_returns_to_a_path_a_header_cannot_carry(client: Any, tenant: Any) -> None:
    for target in ("/console/\r\nX-Evil: 1", "/console/\\\\evil.example"):
        token = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
        answer = client.post(
            "/console/sign-in",
            data={"api_key": tenant["key"], "csrf_token": token, "next": target},
        )
        assert answer.status_code == 302
        assert answer.headers["Location"] == "/console/"
        assert "X-Evil" not in answer.headers


def test_a_page_link_beyond_the_keys_range_starts_from_the_first_page(
    client: Any, tenant: Any, world: Any
) -> None:
    signed_in(client, tenant)
    sub = world["mine"]["sub"]["id"]
    for after in ("9" * 40, "-1", str(1 << 63)):
        assert client.get(f"/console/subscriptions/{sub}?after={after}").status_code == 200


def test_test_events_retries_and_replays_spend_the_tenants_api_budget(
    make_client: Any, tenant: Any
) -> None:
    """What the console makes or sends again counts as the API's same requests do."""
    client = make_client(WEBHOOKS_RATE_LIMIT="8/minute")
    token = signed_in(client, tenant)
    sub = subscribe(client, tenant, "http://127.0.0.1:9/hook", ["order.created"])["id"]  # 1
    for n in range(3):  # 3 more
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    sql("UPDATE deliveries SET status = 'delivered'")
    replayed = client.post(
        f"/console/subscriptions/{sub}/replay",
        data={"csrf_token": token, "since": "2000-01-01T00:00"},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "Requeued 3 deliveries." in replayed  # 7 spent
    answers = [
        client.post(f"/console/subscriptions/{sub}/test", data={"csrf_token": token}).status_code
        for _ in range(3)
    ]
    assert answers == [302, 429, 429]
    (events,) = sql("SELECT count(*) FROM events WHERE event_type = 'webhook.test'")[0]
    assert events == 1
    delivery = sql("SELECT id FROM deliveries ORDER BY id LIMIT 1")[0][0]
    refused = client.post(f"/console/deliveries/{delivery}/retry", data={"csrf_token": token})
    assert refused.status_code == 429 and "retry in" in refused.get_data(as_text=True)
    again = client.post(
        f"/console/subscriptions/{sub}/replay",
        data={"csrf_token": token, "since": "2000-01-01T00:00"},
    )
    assert again.status_code == 429


def test_behind_a_proxy_each_client_has_its_own_sign_in_limit(
    make_client: Any, tenant: Any
) -> None:
    """Every request comes from the proxy's address: the limit must count the client it forwards
    (WEBHOOKS_PROXY_HOPS), and only as many forwarded entries as there are proxies."""
    client = make_client(WEBHOOKS_PROXY_HOPS="1", WEBHOOKS_CONSOLE_SIGNIN_LIMIT="2/minute")

    def via_proxy(forwarded: str) -> dict[str, Any]:
        return {
            "environ_base": {"REMOTE_ADDR": "10.0.0.1"},
            "headers": {"X-Forwarded-For": forwarded, "X-Forwarded-Proto": "https"},
        }

    for _ in range(2):
        assert sign_in(client, "whk_wrong", **via_proxy("198.51.100.7")).status_code == 401
    assert sign_in(client, tenant["key"], **via_proxy("198.51.100.7")).status_code == 429
    # A client that writes its own X-Forwarded-For is still counted by what the proxy saw.
    spoofed = via_proxy("203.0.113.9, 198.51.100.7")
    assert sign_in(client, tenant["key"], **spoofed).status_code == 429
    other = sign_in(client, tenant["key"], **via_proxy("198.51.100.8"))
    assert other.status_code == 302
    assert "Secure" in other.headers["Set-Cookie"]  # the proxy said the client used https


def test_an_ed25519_subscription_shows_its_public_key_and_its_new_one_after_rotation(
    client: Any, tenant: Any
) -> None:
    token = signed_in(client, tenant)
    sub = subscribe(client, tenant, "http://127.0.0.1:9/hook", ["*"], signature_scheme="ed25519")
    page = client.get(f"/console/subscriptions/{sub['id']}").get_data(as_text=True)
    assert sub["public_key"] and sub["public_key"] in page and "Ed25519" in page
    rotated = client.post(
        f"/console/subscriptions/{sub['id']}/rotate-secret", data={"csrf_token": token}
    ).get_data(as_text=True)
    now = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert now["public_key"] != sub["public_key"]
    assert "New signing key" in rotated and now["public_key"] in rotated
    assert "whsk_" not in rotated  # the private key is never shown
