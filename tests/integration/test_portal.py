"""The consumer portal through Flask's test client: links, their expiry, one consumer's scope,
every page and action, CSRF, escaping and the framing headers (real PostgreSQL and Redis)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import SCRIPT, add_attempt, csrf_of, set_status, sql
from webhooks.db import get_engine


def consumer(client: Any, tenant: dict[str, Any], uid: str, name: str | None = None) -> None:
    answer = client.post(
        "/v1/consumers", json={"uid": uid, "name": name or uid.title()}, headers=tenant["headers"]
    )
    assert answer.status_code == 201, answer.get_json()


def link(client: Any, tenant: dict[str, Any], uid: str) -> str:
    """Return the path of a new portal link for the consumer."""
    answer = client.post(f"/v1/consumers/{uid}/portal-links", headers=tenant["headers"])
    assert answer.status_code == 201, answer.get_json()
    return urlsplit(answer.get_json()["url"]).path


@pytest.fixture
def shop(client: Any, tenant: Any, other_tenant: Any) -> dict[str, Any]:
    """Consumers alice and bob of one tenant, each with an endpoint and a failed delivery whose
    attempt's response holds a script tag; the tenant's own subscription; another tenant's."""
    out: dict[str, Any] = {}
    for uid in ("alice", "bob"):
        consumer(client, tenant, uid)
        sub = subscribe(
            client, tenant, f"http://127.0.0.1:9/{uid}", ["order.created"], consumer=uid
        )
        event = client.post(
            "/v1/events",
            json={"event_type": "order.created", "payload": {"n": SCRIPT}, "consumer": uid},
            headers=tenant["headers"],
        ).get_json()
        detail = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
        delivery = detail["deliveries"][0]["id"]
        add_attempt(delivery, 1, "http_error", 500, 5.0, body=SCRIPT)
        set_status("failed", delivery)
        out[uid] = {"sub": sub, "delivery": delivery, "link": link(client, tenant, uid)}
    out["own"] = subscribe(client, tenant, "http://127.0.0.1:9/own", ["*"])
    own_event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    out["own_delivery"] = client.get(
        f"/v1/events/{own_event['id']}", headers=tenant["headers"]
    ).get_json()["deliveries"][0]["id"]
    consumer(client, other_tenant, "alice")
    out["foreign"] = subscribe(
        client, other_tenant, "http://127.0.0.1:9/foreign", ["*"], consumer="alice"
    )
    return out


def test_a_link_is_made_for_a_consumer_of_the_tenant_only(
    client: Any, tenant: Any, other_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOKS_PORTAL_LINK_SECONDS", "600")
    consumer(client, tenant, "alice")
    answer = client.post("/v1/consumers/alice/portal-links", headers=tenant["headers"])
    assert answer.status_code == 201
    body = answer.get_json()
    assert body["url"].startswith("http://localhost/portal/") and body["url"].endswith("/")
    expires = datetime.fromisoformat(body["expires_at"])
    assert abs((expires - datetime.now(UTC)) - timedelta(seconds=600)) < timedelta(seconds=5)
    assert (
        client.post("/v1/consumers/nobody/portal-links", headers=tenant["headers"]).status_code
        == 404
    )
    theirs = client.post("/v1/consumers/alice/portal-links", headers=other_tenant["headers"])
    assert theirs.status_code == 404
    assert client.post("/v1/consumers/alice/portal-links").status_code == 401

    monkeypatch.setenv("WEBHOOKS_PUBLIC_URL", "https://hooks.example.com")
    public = client.post("/v1/consumers/alice/portal-links", headers=tenant["headers"]).get_json()
    assert public["url"].startswith("https://hooks.example.com/portal/")


def test_a_link_opens_the_portal_of_its_consumer(client: Any, shop: Any) -> None:
    page = client.get(shop["alice"]["link"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Alice" in html and "http://127.0.0.1:9/alice" in html
    assert "127.0.0.1:9/bob" not in html and "127.0.0.1:9/own" not in html
    assert "127.0.0.1:9/foreign" not in html
    assert "Set-Cookie" not in page.headers  # the link is the credential: no cookie needed


def test_an_expired_forged_or_orphaned_link_opens_nothing(
    client: Any, tenant: Any, shop: Any
) -> None:
    from itsdangerous import URLSafeSerializer

    from config.pages import get_page_settings
    from webhooks.services.portal import SALT

    path = shop["alice"]["link"]
    token = path.split("/")[2]
    signer = URLSafeSerializer(get_page_settings().session_key, salt=SALT)
    claims = signer.loads(token)
    expired = signer.dumps({**claims, "e": int(datetime.now(UTC).timestamp()) - 1})
    answer = client.get(f"/portal/{expired}/")
    assert answer.status_code == 403 and "expired" in answer.get_data(as_text=True)
    forged = URLSafeSerializer("not the key", salt=SALT).dumps(claims)
    assert client.get(f"/portal/{forged}/").status_code == 403
    assert client.get(f"/portal/{token[:-2]}xx/").status_code == 403
    assert client.delete("/v1/consumers/alice", headers=tenant["headers"]).status_code == 204
    assert client.get(path).status_code == 403


def test_the_link_lifetime_is_checked_by_the_service(client: Any, shop: Any) -> None:
    from webhooks.db import session_scope
    from webhooks.services import ServiceError, portal

    token = shop["alice"]["link"].split("/")[2]
    with session_scope() as session:
        visitor = portal.open_link(session, token)
        assert visitor.uid == "alice"
        portal.open_link(session, token, now=visitor.expires_at - timedelta(seconds=1))
        with pytest.raises(ServiceError, match="expired"):
            portal.open_link(session, token, now=visitor.expires_at)


def test_another_consumers_and_the_tenants_resources_answer_404(client: Any, shop: Any) -> None:
    base = shop["alice"]["link"].rstrip("/")
    token = csrf_of(client.get(base + "/endpoints/new").get_data(as_text=True))
    others = [shop["bob"]["sub"]["id"], shop["own"]["id"], shop["foreign"]["id"]]
    for sub in others:
        assert client.get(f"{base}/endpoints/{sub}").status_code == 404
        for action, data in (
            ("edit", {"url": "http://127.0.0.1:9/x", "event_types": "*"}),
            ("delete", {}),
            ("rotate-secret", {}),
            ("test", {}),
        ):
            answer = client.post(
                f"{base}/endpoints/{sub}/{action}", data={"csrf_token": token, **data}
            )
            assert answer.status_code == 404, (sub, action)
    for delivery in (shop["bob"]["delivery"], shop["own_delivery"]):
        assert client.get(f"{base}/deliveries/{delivery}").status_code == 404
        retry = client.post(f"{base}/deliveries/{delivery}/retry", data={"csrf_token": token})
        assert retry.status_code == 404
    listed = client.get(f"{base}/deliveries").get_data(as_text=True)
    assert shop["alice"]["delivery"][:13] in listed
    assert shop["bob"]["delivery"][:13] not in listed and shop["own_delivery"][:13] not in listed
    with get_engine().connect() as conn:
        live = conn.execute(text("SELECT count(*) FROM subscriptions WHERE deleted_at IS NULL"))
        assert live.scalar_one() == 4  # alice, bob, the tenant's own, the foreign one


def test_a_form_without_the_links_csrf_token_is_refused(client: Any, shop: Any) -> None:
    base = shop["alice"]["link"].rstrip("/")
    sub = shop["alice"]["sub"]["id"]
    bob_token = csrf_of(client.get(shop["bob"]["link"] + "endpoints/new").get_data(as_text=True))
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": bob_token}):
        answer = client.post(f"{base}/endpoints/{sub}/delete", data=data)
        assert answer.status_code == 400
    assert client.get(f"{base}/endpoints/{sub}").status_code == 200


def test_a_consumer_adds_edits_tests_rotates_and_deletes_an_endpoint(
    client: Any, tenant: Any, shop: Any
) -> None:
    base = shop["alice"]["link"].rstrip("/")
    token = csrf_of(client.get(base + "/endpoints/new").get_data(as_text=True))
    added = client.post(
        base + "/endpoints",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/second", "event_types": "a.b"},
    )
    assert added.status_code == 200
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', added.get_data(as_text=True))
    assert secret
    mine = client.get("/v1/subscriptions?consumer=alice", headers=tenant["headers"]).get_json()
    second = next(s for s in mine["data"] if s["url"].endswith("/second"))
    assert second["consumer"] == "alice" and second["event_types"] == ["a.b"]
    path = f"{base}/endpoints/{second['id']}"
    assert secret.group(1) not in client.get(path).get_data(as_text=True)

    client.post(
        path + "/edit",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/v2", "event_types": "c.d *"},
    )
    edited = client.get(f"/v1/subscriptions/{second['id']}", headers=tenant["headers"]).get_json()
    assert edited["url"] == "http://127.0.0.1:9/v2" and edited["event_types"] == ["*", "c.d"]
    assert edited["consumer"] == "alice"

    rotated = client.post(path + "/rotate-secret", data={"csrf_token": token})
    new = re.search(r'id="new-secret">(whsec_[^<]+)<', rotated.get_data(as_text=True))
    assert new and new.group(1) != secret.group(1)

    sent = client.post(path + "/test", data={"csrf_token": token})
    assert sent.status_code == 302
    delivery_path = urlsplit(sent.headers["Location"]).path
    assert delivery_path.startswith(base + "/deliveries/")
    test_page = client.get(delivery_path).get_data(as_text=True)
    assert "webhook.test" in test_page

    gone = client.post(path + "/delete", data={"csrf_token": token})
    assert gone.status_code == 302
    assert (
        client.get(f"/v1/subscriptions/{second['id']}", headers=tenant["headers"]).status_code
        == 404
    )


def test_the_address_guard_applies_in_the_portal(
    client: Any, shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = shop["alice"]["link"].rstrip("/")
    token = csrf_of(client.get(base + "/endpoints/new").get_data(as_text=True))
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "false")
    reset_settings()
    answer = client.post(
        base + "/endpoints",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/inside", "event_types": "*"},
    )
    assert answer.status_code == 422
    assert "field-error" in answer.get_data(as_text=True)
    edit = client.post(
        f"{base}/endpoints/{shop['alice']['sub']['id']}/edit",
        data={"csrf_token": token, "url": "http://10.0.0.1/x", "event_types": "*"},
    )
    assert edit.status_code == 422


def test_event_types_are_picked_from_the_catalogue(client: Any, tenant: Any, shop: Any) -> None:
    with get_engine().begin() as conn:
        for name, archived in (("order.created", False), ("order.paid", False), ("old.one", True)):
            conn.execute(
                text(
                    "INSERT INTO event_types (id, tenant_id, name, description, archived)"
                    " VALUES (gen_random_uuid(), :t, :n, :d, :a)"
                ),
                {"t": tenant["id"], "n": name, "d": f"{name} <b>described</b>", "a": archived},
            )
    base = shop["alice"]["link"].rstrip("/")
    form = client.get(base + "/endpoints/new").get_data(as_text=True)
    assert 'value="order.created"' in form and 'value="order.paid"' in form
    assert "old.one" not in form
    assert "&lt;b&gt;described&lt;/b&gt;" in form
    token = csrf_of(form)
    client.post(
        base + "/endpoints",
        data={
            "csrf_token": token,
            "url": "http://127.0.0.1:9/picked",
            "event_type": ["order.paid", "order.created"],
        },
    )
    mine = client.get("/v1/subscriptions?consumer=alice", headers=tenant["headers"]).get_json()
    picked = next(s for s in mine["data"] if s["url"].endswith("/picked"))
    assert picked["event_types"] == ["order.created", "order.paid"]


def test_a_consumer_sees_attempts_escaped_and_retries(client: Any, tenant: Any, shop: Any) -> None:
    base = shop["alice"]["link"].rstrip("/")
    delivery = shop["alice"]["delivery"]
    page = client.get(f"{base}/deliveries/{delivery}")
    html = page.get_data(as_text=True)
    assert "HTTP 500" in html and "&lt;script&gt;" in html and "<script" not in html
    token = csrf_of(html)
    retried = client.post(f"{base}/deliveries/{delivery}/retry", data={"csrf_token": token})
    assert retried.status_code == 200 and "Delivery sent again." in retried.get_data(as_text=True)
    state = client.get(f"/v1/deliveries/{delivery}", headers=tenant["headers"]).get_json()
    assert state["status"] == "pending"


def test_the_portal_may_be_framed_by_the_configured_origins_and_is_branded(
    client: Any, shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOKS_PORTAL_FRAME_ANCESTORS", "https://app.example.com")
    monkeypatch.setenv("WEBHOOKS_PORTAL_TITLE", "Acme <Hooks>")
    monkeypatch.setenv("WEBHOOKS_PORTAL_LOGO_URL", "https://cdn.example.com/logo.png")
    monkeypatch.setenv("WEBHOOKS_PORTAL_ACCENT_COLOUR", "#ff5500")
    page = client.get(shop["alice"]["link"])
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors https://app.example.com" in csp
    assert "script-src 'none'" in csp and "img-src 'self' data: https://cdn.example.com" in csp
    assert "X-Frame-Options" not in page.headers
    html = page.get_data(as_text=True)
    assert "Acme &lt;Hooks&gt;" in html and 'src="https://cdn.example.com/logo.png"' in html
    theme = client.get("/portal/theme.css")
    assert theme.mimetype == "text/css" and "--accent: #ff5500" in theme.get_data(as_text=True)


def test_bad_portal_settings_stop_the_app(monkeypatch: pytest.MonkeyPatch, servers: Any) -> None:
    from config import ConfigError
    from webhooks import create_app

    for name, value in (
        ("WEBHOOKS_PORTAL_ACCENT_COLOUR", "red; } body { display:none"),
        ("WEBHOOKS_PORTAL_FRAME_ANCESTORS", "https://ok.example.com javascript:x"),
        ("WEBHOOKS_PORTAL_LOGO_URL", "javascript:alert(1)"),
        ("WEBHOOKS_CONSOLE_SIGNIN_LIMIT", "lots"),
        ("WEBHOOKS_PUBLIC_URL", "ftp://example.com"),
        ("WEBHOOKS_CONSOLE_SECRET_KEY", "too short"),
        ("WEBHOOKS_CONSOLE_SESSION_SECONDS", "30"),
        ("WEBHOOKS_PORTAL_LINK_SECONDS", "an hour"),
    ):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(ConfigError, match=name):
                create_app({"TESTING": True})


def test_the_links_token_never_reaches_the_access_log(
    client: Any, shop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    path = shop["alice"]["link"]
    token = path.split("/")[2]
    with caplog.at_level(logging.INFO, logger="webhooks.access"):
        assert client.get(path + "deliveries").status_code == 200
    paths = [getattr(r, "path", "") for r in caplog.records if r.name == "webhooks.access"]
    assert paths == ["/portal/<token>/deliveries"]
    assert token not in caplog.text


def test_odd_form_input_is_refused_not_a_crash(client: Any, tenant: Any, shop: Any) -> None:
    base = shop["alice"]["link"].rstrip("/")
    sub = shop["alice"]["sub"]["id"]
    token = csrf_of(client.get(base + "/endpoints/new").get_data(as_text=True))
    wrong = client.post(f"{base}/endpoints/{sub}/delete", data={"csrf_token": "é"})
    assert wrong.status_code == 400
    form = {"csrf_token": token, "url": "http://127.0.0.1:9/x", "event_types": "order.created"}
    nul = client.post(base + "/endpoints", data=form | {"description": "a\x00b"})
    assert nul.status_code == 400 and "NUL character" in nul.get_data(as_text=True)
    assert client.get(f"{base}/endpoints/{sub}").status_code == 200  # nothing deleted


def test_a_links_test_events_and_retries_spend_the_tenants_api_budget(
    make_client: Any, tenant: Any
) -> None:
    """A link is in a third party's hands: what it makes counts against the tenant's limit."""
    client = make_client(WEBHOOKS_RATE_LIMIT="5/minute")
    consumer(client, tenant, "alice")  # 1
    sub = subscribe(client, tenant, "http://127.0.0.1:9/a", ["*"], consumer="alice")["id"]  # 2
    base = link(client, tenant, "alice").rstrip("/")  # 3
    token = csrf_of(client.get(base + "/endpoints/new").get_data(as_text=True))
    answers = [
        client.post(f"{base}/endpoints/{sub}/test", data={"csrf_token": token}).status_code
        for _ in range(4)
    ]
    assert answers == [302, 302, 429, 429]
    (events,) = sql("SELECT count(*) FROM events")[0]
    assert events == 2
    delivery = sql("SELECT id FROM deliveries ORDER BY id LIMIT 1")[0][0]
    retry = client.post(f"{base}/deliveries/{delivery}/retry", data={"csrf_token": token})
    assert retry.status_code == 429


def test_a_consumer_sees_an_ed25519_endpoints_public_key_and_its_new_one(
    client: Any, tenant: Any
) -> None:
    consumer(client, tenant, "alice")
    sub = subscribe(
        client, tenant, "http://127.0.0.1:9/a", ["*"], consumer="alice", signature_scheme="ed25519"
    )
    base = link(client, tenant, "alice").rstrip("/")
    page = client.get(f"{base}/endpoints/{sub['id']}").get_data(as_text=True)
    assert sub["public_key"] in page
    token = csrf_of(page)
    rotated = client.post(
        f"{base}/endpoints/{sub['id']}/rotate-secret", data={"csrf_token": token}
    ).get_data(as_text=True)
    now = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert now["public_key"] != sub["public_key"] and now["public_key"] in rotated
    assert "New signing key" in rotated and "whsk_" not in rotated


def test_links_and_console_sessions_outlive_the_first_step_of_a_secret_key_rotation(
    app: Any, client: Any, tenant: Any, make_client: Any
) -> None:
    """Step 1 of rotating WEBHOOKS_SECRET_KEY puts the new key in it and the old one in
    WEBHOOKS_PREVIOUS_SECRET_KEYS: links handed out and console sessions opened before still
    work (pages signed with the old key are still read), while new ones use the new key."""
    import base64

    from tests.integration.test_console import signed_in

    old = base64.urlsafe_b64encode(b"o" * 32).decode()
    new = base64.urlsafe_b64encode(b"n" * 32).decode()
    before = make_client(WEBHOOKS_SECRET_KEY=old, WEBHOOKS_PREVIOUS_SECRET_KEYS="")
    consumer(before, tenant, "alice")
    base = link(before, tenant, "alice").rstrip("/")
    token = csrf_of(before.get(base + "/endpoints/new").get_data(as_text=True))
    signed_in(before, tenant)
    cookie = before.get_cookie("webhooks_session").value

    after = make_client(WEBHOOKS_SECRET_KEY=new, WEBHOOKS_PREVIOUS_SECRET_KEYS=old)
    assert after.get(base + "/").status_code == 200  # the link still opens
    form = {"csrf_token": token, "url": "http://127.0.0.1:9/a", "event_types": "order.created"}
    assert after.post(base + "/endpoints", data=form).status_code == 200  # a page rendered before
    after.set_cookie("webhooks_session", cookie)
    assert after.get("/console/").status_code == 200  # the session opened before
    fresh = link(after, tenant, "alice").rstrip("/")
    only_new = make_client(WEBHOOKS_SECRET_KEY=new, WEBHOOKS_PREVIOUS_SECRET_KEYS="")
    assert only_new.get(fresh + "/").status_code == 200  # signed with the new key
    assert only_new.get(base + "/").status_code == 403  # the old key is gone: so is its link
