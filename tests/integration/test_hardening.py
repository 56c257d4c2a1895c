"""Hardening (issue 13): what an outside review and a hostile tenant found, each fix proven."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from scripts.harness import wait_until
from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import sql
from webhooks.db import get_engine


def test_health_answers_200_with_circuit_unknown_when_redis_is_unreachable(
    client: Any, tenant: dict[str, Any], make_client: Callable[..., Any]
) -> None:
    sub = subscribe(client, tenant, "http://127.0.0.1:9/a")
    # Nothing listens on port 1: every Redis call fails at once.
    down = make_client(REDIS_URL="redis://127.0.0.1:1/0")
    resp = down.get(f"/v1/subscriptions/{sub['id']}/health", headers=tenant["headers"])
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["circuit"] == {
        "state": "unknown",
        "consecutive_failures": None,
        "opened_at": None,
        "probe_at": None,
    }
    assert body["deliveries"]["pending"] == 0


@pytest.mark.parametrize("value", ["\u2603", "\u20ac", "caf\u00e9", "a\tb"])
def test_header_values_outside_visible_ascii_answer_422_at_create_and_update(
    client: Any, tenant: dict[str, Any], value: str
) -> None:
    body = {"url": "http://127.0.0.1:9/a", "event_types": ["*"], "headers": {"X-Snow": value}}
    resp = client.post("/v1/subscriptions", json=body, headers=tenant["headers"])
    assert resp.status_code == 422, resp.get_json()
    assert "X-Snow" in resp.get_json()["error"]["details"]["fields"]["headers"][0]
    sub = subscribe(client, tenant, "http://127.0.0.1:9/a")
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"headers": {"X-Snow": value}},
        headers=tenant["headers"],
    )
    assert resp.status_code == 422, resp.get_json()


def test_subscription_whose_host_never_resolves_answers_422_within_the_dns_budget(
    make_client: Callable[..., Any], tenant: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo
    released = threading.Event()

    def never_answers(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".silent.test"):
            released.wait(20)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    client = make_client(WEBHOOKS_DNS_TIMEOUT_SECONDS="0.5", WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    try:
        started = time.monotonic()
        resp = client.post(
            "/v1/subscriptions",
            json={"url": "https://hook.silent.test/", "event_types": ["*"]},
            headers=tenant["headers"],
        )
        assert time.monotonic() - started < 2
        assert resp.status_code == 422, resp.get_json()
        assert "did not resolve within 0.5 s" in resp.get_json()["error"]["message"]
        sub = subscribe(client, tenant, "https://1.1.1.1/")
        started = time.monotonic()
        resp = client.patch(
            f"/v1/subscriptions/{sub['id']}",
            json={"url": "https://other.silent.test/"},
            headers=tenant["headers"],
        )
        assert time.monotonic() - started < 2
        assert resp.status_code == 422, resp.get_json()
    finally:
        released.set()


def test_event_answer_holds_the_first_100_deliveries_and_links_to_the_paginated_list(
    client: Any, tenant: dict[str, Any]
) -> None:
    for i in range(101):
        subscribe(client, tenant, f"http://127.0.0.1:9/s{i}")
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    assert event["deliveries"] == 101
    body = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
    assert len(body["deliveries"]) == 100
    assert body["more_deliveries"] is True
    assert body["deliveries_url"] == f"/v1/deliveries?event_id={event['id']}"
    seen: set[str] = set()
    url = body["deliveries_url"] + "&limit=60"
    while url:
        page = client.get(url, headers=tenant["headers"]).get_json()
        seen |= {d["id"] for d in page["data"]}
        cursor = page["next_cursor"]
        url = f"{body['deliveries_url']}&limit=60&cursor={cursor}" if cursor else ""
    assert len(seen) == 101


def test_delivery_answer_holds_the_first_100_attempts_and_the_rest_are_paginated(
    client: Any, tenant: dict[str, Any]
) -> None:
    subscribe(client, tenant, "http://127.0.0.1:9/a")
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    with get_engine().begin() as conn:
        (delivery_id,) = conn.execute(text("SELECT id FROM deliveries")).one()
        conn.execute(
            text(
                "INSERT INTO attempts (delivery_id, number, result, error, url, created_at)"
                " SELECT :d, n, 'timeout', 'slow ' || n, 'http://127.0.0.1:9/a', now()"
                " FROM generate_series(1, 105) AS n"
            ),
            {"d": delivery_id},
        )
    body = client.get(f"/v1/deliveries/{delivery_id}", headers=tenant["headers"]).get_json()
    assert [a["number"] for a in body["attempts"]] == list(range(1, 101))
    assert body["more_attempts"] is True
    assert body["attempts_url"] == f"/v1/deliveries/{delivery_id}/attempts"
    numbers: list[int] = []
    cursor = None
    while True:
        query = "?limit=40" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(body["attempts_url"] + query, headers=tenant["headers"]).get_json()
        numbers += [a["number"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert numbers == list(range(1, 106))
    event_body = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
    assert event_body["more_deliveries"] is False


def test_backlog_gauges_read_the_database_at_most_once_per_cache_period(
    client: Any, tenant: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from sqlalchemy import event

    from webhooks import metrics

    monkeypatch.setenv("WEBHOOKS_METRICS_CACHE_SECONDS", "1")
    reset_settings()
    metrics._backlog.read_at = float("-inf")
    subscribe(client, tenant, "http://127.0.0.1:9/a")
    publish(client, tenant, "order.created", {"n": 1})
    counts: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM deliveries" in statement:
            counts.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        scrapes: list[str] = []

        def scrape() -> None:
            registry = CollectorRegistry()  # a fresh registry per scrape, as the API builds
            registry.register(metrics.BacklogCollector())
            scrapes.append(generate_latest(registry).decode())

        threads = [threading.Thread(target=scrape) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(scrapes) == 20
        assert len(counts) == 1
        assert all("webhooks_pending_deliveries 1.0" in s for s in scrapes)
        first_age = _sample(scrapes[0], "webhooks_oldest_pending_age_seconds")
        time.sleep(0.5)
        scrape()
        assert len(counts) == 1
        # The age is computed at each scrape from the cached creation time: it keeps growing.
        assert _sample(scrapes[-1], "webhooks_oldest_pending_age_seconds") >= first_age + 0.4
        time.sleep(0.6)
        scrape()
        assert len(counts) == 2
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _sample(text_format: str, name: str) -> float:
    for line in text_format.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_worker_serves_its_metrics_on_loopback_unless_told_otherwise(
    start_worker: Callable[..., Any],
) -> None:
    import psutil
    import requests

    from scripts.embedded import free_port

    port = free_port()
    worker = start_worker(concurrency=1, WEBHOOKS_WORKER_METRICS_PORT=port)
    wait_until(
        lambda: (
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).ok
            if _listening(port)
            else False
        ),
        timeout=60,
        message="worker metrics listening",
    )
    (listener,) = [
        c
        for c in psutil.Process(worker.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listener.laddr.ip == "127.0.0.1"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _deliver_now(event_id: str) -> None:
    """Make the delivery's attempt in this process, as a worker's task would."""
    from webhooks.services import delivery

    with get_engine().begin() as conn:
        ids = [str(r[0]) for r in conn.execute(text("SELECT id FROM deliveries"))]
    for delivery_id in ids:
        delivery.attempt(delivery_id)


def test_custom_headers_are_encrypted_at_rest_redacted_in_answers_and_sent_in_full(
    client: Any, tenant: dict[str, Any], receiver: Any
) -> None:
    secret_value = "Bearer s3cr3t-of-the-receiver"
    sub = subscribe(
        client,
        tenant,
        receiver.url("/h"),
        headers={"Authorization": secret_value, "X-Team": "payments"},
    )
    redacted = {"Authorization": "********", "X-Team": "********"}
    assert sub["headers"] == redacted
    assert (
        client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()[
            "headers"
        ]
        == redacted
    )
    listed = client.get("/v1/subscriptions", headers=tenant["headers"]).get_json()["data"]
    assert listed[0]["headers"] == redacted
    with get_engine().begin() as conn:
        dump = conn.execute(
            text("SELECT headers::text, headers_ciphertext FROM subscriptions")
        ).one()
    assert "s3cr3t" not in dump[0] and b"s3cr3t" not in dump[1]

    # Sending the redacted value back keeps the stored one; a new value replaces it.
    resp = client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"headers": {"Authorization": "********", "X-Team": "billing"}},
        headers=tenant["headers"],
    )
    assert resp.status_code == 200 and resp.get_json()["headers"] == redacted

    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    _deliver_now(event["id"])
    (got,) = receiver.wait_for("/h", 1)
    assert got.headers["authorization"] == secret_value
    assert got.headers["x-team"] == "billing"


def test_migration_encrypts_existing_plain_headers_and_downgrade_restores_them(
    servers: Any,
) -> None:
    import psycopg
    from alembic import command
    from sqlalchemy import create_engine, pool

    from config import normalize_database_url
    from tests.support import alembic_config
    from webhooks.crypto import decrypt_headers

    if servers.pg is None:
        pytest.skip("needs the embedded PostgreSQL to create a scratch database")
    name = "webhooks_headers_migration"
    engine = create_engine(
        normalize_database_url(servers.pg.create_database(name)), poolclass=pool.NullPool
    )
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name) VALUES"
                    " ('01900000-0000-7000-8000-000000000001', 't');"
                    "INSERT INTO subscriptions (id, tenant_id, url, event_types, headers, status,"
                    " secret_ciphertext) VALUES"
                    " ('01900000-0000-7000-8000-0000000000a1',"
                    "  '01900000-0000-7000-8000-000000000001', 'http://x/', '{*}',"
                    "  '{\"Authorization\": \"Bearer old-plain\"}', 'active', '\\x01'),"
                    " ('01900000-0000-7000-8000-0000000000a2',"
                    "  '01900000-0000-7000-8000-000000000001', 'http://x/', '{*}',"
                    "  '{}', 'active', '\\x01')"
                )
            )
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            rows = dict(
                conn.execute(text("SELECT id::text, headers_ciphertext FROM subscriptions")).all()
            )
            shown = conn.execute(text("SELECT headers::text FROM subscriptions")).scalars().all()
        blob = rows["01900000-0000-7000-8000-0000000000a1"]
        assert b"old-plain" not in blob
        assert decrypt_headers(blob, b"01900000-0000-7000-8000-0000000000a1") == {
            "Authorization": "Bearer old-plain"
        }
        assert rows["01900000-0000-7000-8000-0000000000a2"] is None
        assert not any("old-plain" in s for s in shown)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001")
        (restored,) = sql(
            "SELECT headers->>'Authorization' FROM subscriptions"
            " WHERE id = '01900000-0000-7000-8000-0000000000a1'",
            engine=engine,
        )[0]
        assert restored == "Bearer old-plain"
    finally:
        engine.dispose()
        with psycopg.connect(servers.pg.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


KEY_A = base64.urlsafe_b64encode(b"A" * 32).decode()
KEY_B = base64.urlsafe_b64encode(b"B" * 32).decode()


def _blobs() -> list[bytes]:
    rows = sql(
        "SELECT secret_ciphertext, previous_secret_ciphertext, headers_ciphertext"
        " FROM subscriptions"
    )
    return [blob for row in rows for blob in row if blob is not None]


def test_rotate_secret_key_re_encrypts_everything_while_both_keys_read(
    app: Any, tenant: dict[str, Any], receiver: Any, make_client: Callable[..., Any]
) -> None:
    from standardwebhooks import Webhook

    from webhooks.crypto import key_id

    client = make_client(WEBHOOKS_SECRET_KEY=KEY_A)
    sub = subscribe(client, tenant, receiver.url("/k"), headers={"X-Token": "t0ken"})
    rotated = client.post(
        f"/v1/subscriptions/{sub['id']}/rotate-secret", headers=tenant["headers"]
    ).get_json()
    assert len(_blobs()) == 3  # current and previous secret, headers

    # Every process gets the new key, the old one only to read: deliveries go on.
    client = make_client(WEBHOOKS_SECRET_KEY=KEY_B, WEBHOOKS_PREVIOUS_SECRET_KEYS=KEY_A)
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    _deliver_now(event["id"])
    (got,) = receiver.wait_for("/k", 1)
    assert got.headers["x-token"] == "t0ken"
    Webhook(rotated["secret"]).verify(got.body, got.headers)
    Webhook(sub["secret"]).verify(got.body, got.headers)  # the old secret, in its grace period

    result = app.test_cli_runner().invoke(args=["rotate-secret-key"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 3 values of 1 subscriptions" in result.output
    assert all(blob[1:5] == key_id(base64.urlsafe_b64decode(KEY_B)) for blob in _blobs())
    again = app.test_cli_runner().invoke(args=["rotate-secret-key"])
    assert "re-encrypted 0 values" in again.output

    # The old key is gone everywhere now, and nothing needed it.
    client = make_client(WEBHOOKS_SECRET_KEY=KEY_B, WEBHOOKS_PREVIOUS_SECRET_KEYS="")
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE deliveries SET status = 'pending', next_attempt_at = now()"))
    _deliver_now(event["id"])
    second = receiver.wait_for("/k", 2)[1]
    assert second.headers["x-token"] == "t0ken"
    Webhook(rotated["secret"]).verify(second.body, second.headers)


def test_rotate_secret_key_names_a_key_it_cannot_find(
    app: Any, tenant: dict[str, Any], make_client: Callable[..., Any]
) -> None:
    client = make_client(WEBHOOKS_SECRET_KEY=KEY_A)
    subscribe(client, tenant, "http://127.0.0.1:9/a")
    make_client(WEBHOOKS_SECRET_KEY=KEY_B, WEBHOOKS_PREVIOUS_SECRET_KEYS="")
    result = app.test_cli_runner().invoke(args=["rotate-secret-key"])
    assert result.exit_code == 1
    assert "WEBHOOKS_PREVIOUS_SECRET_KEYS" in result.output


def test_ed25519_subscription_signs_v1a_verifiable_with_its_public_key_across_rotation(
    client: Any, tenant: dict[str, Any], receiver: Any
) -> None:
    from standardwebhooks import Webhook

    from tests.support import verify_v1a

    sub = subscribe(client, tenant, receiver.url("/ed"), signature_scheme="ed25519")
    assert sub["signature_scheme"] == "ed25519"
    assert sub["secret"] is None  # the private key never leaves the service
    public = sub["public_key"]
    assert public.startswith("whpk_")
    shown = client.get(f"/v1/subscriptions/{sub['id']}", headers=tenant["headers"]).get_json()
    assert (shown["signature_scheme"], shown["public_key"]) == ("ed25519", public)
    with get_engine().begin() as conn:
        (blob,) = conn.execute(text("SELECT secret_ciphertext FROM subscriptions")).one()
    assert b"whsk_" not in blob  # encrypted at rest

    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    _deliver_now(event["id"])
    (first,) = receiver.wait_for("/ed", 1)
    assert first.headers["webhook-signature"].startswith("v1a,")
    verify_v1a(public, first.body, first.headers)

    # Rotation, as for HMAC: a new key pair, and the old key keeps signing in the grace period.
    rotated = client.post(
        f"/v1/subscriptions/{sub['id']}/rotate-secret", headers=tenant["headers"]
    ).get_json()
    assert rotated["secret"] is None and rotated["public_key"] not in (None, public)
    _redeliver()
    second = receiver.wait_for("/ed", 2)[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 2
    verify_v1a(rotated["public_key"], second.body, second.headers)
    verify_v1a(public, second.body, second.headers)

    # Back to HMAC with PATCH: the answer holds the new secret, once; both kinds sign meanwhile.
    patched = client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"signature_scheme": "hmac-sha256"},
        headers=tenant["headers"],
    ).get_json()
    assert patched["signature_scheme"] == "hmac-sha256" and patched["public_key"] is None
    assert patched["secret"].startswith("whsec_")
    _redeliver()
    third = receiver.wait_for("/ed", 3)[2]
    Webhook(patched["secret"]).verify(third.body, third.headers)
    verify_v1a(rotated["public_key"], third.body, third.headers)


def _redeliver() -> None:
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE deliveries SET status = 'pending', next_attempt_at = now()"))
    _deliver_now("")


def test_unknown_signature_scheme_answers_422(client: Any, tenant: dict[str, Any]) -> None:
    resp = client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/a", "event_types": ["*"], "signature_scheme": "rsa"},
        headers=tenant["headers"],
    )
    assert resp.status_code == 422
    assert "signature_scheme" in resp.get_json()["error"]["details"]["fields"]
    sub = subscribe(client, tenant, "http://127.0.0.1:9/a")
    assert sub["signature_scheme"] == "hmac-sha256" and sub["public_key"] is None
