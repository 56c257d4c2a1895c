"""Security: tenant isolation, API keys, rate limits, the outbound address guard (at create and
at delivery, DNS rebinding included), secrets at rest and their rotation, input limits."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scripts.harness import Receiver, Reply, wait_until
from tests.conftest import reset_settings
from tests.integration.conftest import publish, subscribe
from tests.support import assert_error, counts, resource_calls, sql
from webhooks.db import get_engine
from webhooks.models import AttemptResult

# --- tenant isolation ----------------------------------------------------------------------


@pytest.fixture
def foreign(client: Any, tenant: dict[str, Any]) -> dict[str, Any]:
    """Resources of `tenant`: a subscription, an event, and its delivery (failed, so that its
    owner could retry and replay it)."""
    sub = subscribe(client, tenant, "http://127.0.0.1:9/a", ["*"])
    event = publish(client, tenant, "order.created", {"secret": "mine"}).get_json()
    (delivery_id,) = [r[0] for r in sql("SELECT id FROM deliveries")]
    sql("UPDATE deliveries SET status = 'failed'")
    return {"sub": sub["id"], "event": event["id"], "delivery": str(delivery_id)}


def test_another_tenants_resources_answer_404_on_every_route(
    client: Any, tenant: dict[str, Any], other_tenant: dict[str, Any], foreign: dict[str, Any]
) -> None:
    """The one cross-tenant 404 test: every call on a resource; nothing is written."""
    calls = resource_calls(foreign["sub"], foreign["event"], foreign["delivery"])
    before = counts()
    for method, path, body in calls:
        resp = client.open(path, method=method, json=body, headers=other_tenant["headers"])
        error = assert_error(resp, 404, "not_found")
        assert tenant["key"] not in json.dumps(error)
        assert "mine" not in json.dumps(error)
    assert counts() == before

    # Nothing changed: the owner still sees the same subscription, secret and delivery.
    (row,) = sql("SELECT description, deleted_at, previous_secret_ciphertext FROM subscriptions")
    assert row == (None, None, None)
    assert sql("SELECT status FROM deliveries") == [("failed",)]
    shown = client.get(f"/v1/events/{foreign['event']}", headers=tenant["headers"]).get_json()
    assert shown["payload"] == {"secret": "mine"}
    for method, path, body in calls:
        if method == "GET" or path.endswith("/retry"):
            resp = client.open(path, method=method, json=body, headers=tenant["headers"])
            assert resp.status_code in (200, 202), (path, resp.get_json())


def test_lists_filters_and_cursors_never_show_another_tenants_rows(
    client: Any, tenant: dict[str, Any], other_tenant: dict[str, Any]
) -> None:
    own = subscribe(client, other_tenant, "http://127.0.0.1:9/own", ["*"])["id"]
    own_event = publish(client, other_tenant, "order.created", {}).get_json()["id"]
    theirs = [subscribe(client, tenant, f"http://127.0.0.1:9/{i}", ["*"])["id"] for i in range(3)]
    their_event = publish(client, tenant, "order.created", {}).get_json()["id"]
    their_ids = {*theirs, their_event}
    their_deliveries = {
        str(r[0]) for r in sql("SELECT id FROM deliveries WHERE event_id = :e", e=their_event)
    }
    assert len(their_deliveries) == 3
    their_ids |= their_deliveries
    # The owner pages through its own subscriptions: the cursors are real.
    page = client.get("/v1/subscriptions?limit=1", headers=tenant["headers"]).get_json()
    cursors = [page["next_cursor"]]
    page = client.get(
        f"/v1/subscriptions?limit=1&cursor={cursors[0]}", headers=tenant["headers"]
    ).get_json()
    cursors.append(page["next_cursor"])
    dpage = client.get("/v1/deliveries?limit=1", headers=tenant["headers"]).get_json()
    cursors.append(dpage["next_cursor"])
    assert all(cursors)

    other = other_tenant["headers"]
    seen: list[dict[str, Any]] = []
    for path in (
        "/v1/subscriptions",
        *(f"/v1/subscriptions?cursor={c}" for c in cursors),
        "/v1/deliveries",
        *(f"/v1/deliveries?cursor={c}" for c in cursors),
        *(f"/v1/deliveries?subscription_id={s}" for s in theirs),
        f"/v1/deliveries?event_id={their_event}",
        f"/v1/deliveries?event_id={their_event}&status=pending",
    ):
        resp = client.get(path, headers=other)
        assert resp.status_code == 200, (path, resp.get_json())
        seen.extend(resp.get_json()["data"])
        assert not their_ids & _ids(resp.get_json()), path
    assert {s["id"] for s in seen if "url" in s} <= {own}
    assert {d["event_id"] for d in seen if "event_id" in d} <= {own_event}
    # And the other tenant does see its own rows (the lists above were not empty by accident).
    assert [s["id"] for s in client.get("/v1/subscriptions", headers=other).get_json()["data"]] == [
        own
    ]


def _ids(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {v for v in node.values() if isinstance(v, str)} | {
            i for v in node.values() for i in _ids(v)
        }
    if isinstance(node, list):
        return {i for v in node for i in _ids(v)}
    return set()


def test_events_fan_out_and_idempotency_keys_stay_within_a_tenant(
    client: Any, tenant: dict[str, Any], other_tenant: dict[str, Any]
) -> None:
    subscribe(client, tenant, "http://127.0.0.1:9/a", ["*"])
    mine = publish(client, tenant, "order.created", {"n": 1}, **{"Idempotency-Key": "k1"})
    assert mine.status_code == 202 and mine.get_json()["deliveries"] == 1
    # The same key with another body from another tenant is a new event, not a 409 or a replay.
    theirs = publish(client, other_tenant, "order.paid", {"n": 2}, **{"Idempotency-Key": "k1"})
    assert theirs.status_code == 202, theirs.get_json()
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["id"] != mine.get_json()["id"]
    # ... and it reaches none of the first tenant's subscriptions, though they take "*".
    assert theirs.get_json()["deliveries"] == 0
    assert sql("SELECT count(*) FROM deliveries") == [(1,)]


# --- API keys ------------------------------------------------------------------------------


def test_api_keys_are_stored_only_as_their_sha256(app: Any, client: Any) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-tenant", "initech"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("whk_") and len(base64.urlsafe_b64decode(key[4:] + "=")) >= 32
    assert (
        client.get("/v1/subscriptions", headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )

    (row,) = sql("SELECT row_to_json(k)::text, key_hash FROM api_keys k")
    stored, key_hash = row
    assert bytes(key_hash) == hashlib.sha256(key.encode()).digest()
    secret_part = key[12:]  # what the stored prefix does not show
    for spelling in (key, secret_part, base64.urlsafe_b64decode(key[4:] + "=").hex()):
        assert spelling not in stored
    listing = runner.invoke(args=["list-keys"]).output
    assert key not in listing and secret_part not in listing


def test_revoked_key_answers_401_and_the_tenants_other_keys_keep_working(
    app: Any, client: Any, tenant: dict[str, Any]
) -> None:
    runner = app.test_cli_runner()
    second = runner.invoke(args=["create-key", str(tenant["id"])]).output.strip().splitlines()[-1]
    listing = runner.invoke(args=["list-keys", "--tenant", str(tenant["id"])]).output
    first_id = next(line.split()[0] for line in listing.splitlines() if tenant["key"][:12] in line)
    result = runner.invoke(args=["revoke-key", first_id])
    assert result.exit_code == 0, result.output

    assert_error(client.get("/v1/subscriptions", headers=tenant["headers"]), 401, "unauthorized")
    assert (
        client.get("/v1/subscriptions", headers={"Authorization": f"Bearer {second}"}).status_code
        == 200
    )
    listing = runner.invoke(args=["list-keys", "--tenant", str(tenant["id"])]).output
    revoked_line = next(line for line in listing.splitlines() if line.startswith(first_id))
    assert "revoked=-" not in revoked_line
    assert runner.invoke(args=["revoke-key", first_id]).exit_code != 0


# --- rate limits ---------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_per_tenant(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    other_tenant: dict[str, Any],
    servers: Any,
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT="3/minute")
    for n in range(3):
        resp = client.get("/v1/subscriptions", headers=tenant["headers"])
        assert resp.status_code == 200
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert resp.headers["X-RateLimit-Remaining"] == str(2 - n)
        assert 0 < int(resp.headers["X-RateLimit-Reset"]) - time.time() <= 61
        assert "Retry-After" not in resp.headers
    resp = publish(client, tenant, "order.created", {})
    error = assert_error(resp, 429, "rate_limited")
    wait = int(resp.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert error["details"]["retry_after"] == wait
    assert sql("SELECT count(*) FROM events") == [(0,)]
    # Another tenant has its own budget; health, metrics and the description are not limited.
    assert client.get("/v1/subscriptions", headers=other_tenant["headers"]).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs") * 2:
        resp = client.get(path, headers=tenant["headers"])
        assert resp.status_code == 200, path
        assert "Retry-After" not in resp.headers
    # The counters in Redis are keyed on the tenant, never on the key.
    keys = b" ".join(redis.Redis.from_url(servers.redis_url).keys("*")).decode()
    assert str(tenant["id"]) in keys
    assert tenant["key"] not in keys and tenant["key"][4:] not in keys


def test_rate_limit_falls_back_to_memory_and_ingest_keeps_working_when_redis_is_down(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    from scripts.embedded import free_port

    client = make_client(
        WEBHOOKS_RATE_LIMIT="3/minute", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    for n in range(3):
        resp = publish(client, tenant, "order.created", {"n": n})
        assert resp.status_code == 202, resp.get_json()
    assert sql("SELECT count(*) FROM events") == [(3,)]
    resp = publish(client, tenant, "order.created", {"n": 3})
    assert_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1


@pytest.fixture
def key_lookups(servers: Any) -> Iterator[list[str]]:
    """Record every query of the api_keys table made by this process."""
    from sqlalchemy import event

    engine = get_engine()
    seen: list[str] = []

    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM api_keys" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", _record)
    yield seen
    event.remove(engine, "before_cursor_execute", _record)


def test_requests_without_a_valid_key_share_one_counter_per_address_and_stop_costing_lookups(
    make_client: Callable[..., Any], tenant: dict[str, Any], key_lookups: list[str]
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED="4/minute")
    assert client.get("/v1/subscriptions", headers=tenant["headers"]).status_code == 200
    assert len(key_lookups) == 1
    made_up = [{"Authorization": f"Bearer whk_{uuid.uuid4().hex}{n}"} for n in range(12)]
    answers = [client.get("/v1/subscriptions", headers=h).status_code for h in made_up[:3]]
    answers.append(client.get("/v1/subscriptions").status_code)  # no key at all: same counter
    answers += [client.get("/v1/subscriptions", headers=h).status_code for h in made_up[3:]]
    assert answers == [401] * 4 + [429] * 9
    # Only the made-up keys that came before the limit were looked up in PostgreSQL.
    assert len(key_lookups) == 1 + 3
    resp = client.get("/v1/subscriptions", headers=made_up[0])
    error = assert_error(resp, 429, "rate_limited")
    assert "address" in error["message"] and int(resp.headers["Retry-After"]) >= 1
    # Another address has its own counter; a key already known to this process still works.
    other = {"REMOTE_ADDR": "10.9.8.7"}
    assert (
        client.get("/v1/subscriptions", headers=made_up[0], environ_base=other).status_code == 401
    )
    assert client.get("/v1/subscriptions", headers=tenant["headers"]).status_code == 200


def test_valid_keys_are_cached_per_process(
    make_client: Callable[..., Any], tenant: dict[str, Any], key_lookups: list[str]
) -> None:
    client = make_client()
    for n in range(20):
        assert publish(client, tenant, "order.created", {"n": n}).status_code == 202
    assert len(key_lookups) == 1


def test_a_revoked_key_is_refused_at_once_while_redis_is_down(
    make_client: Callable[..., Any], tenant: dict[str, Any], key_lookups: list[str]
) -> None:
    from scripts.embedded import free_port

    client = make_client(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert client.get("/v1/subscriptions", headers=tenant["headers"]).status_code == 200
    assert client.get("/v1/subscriptions", headers=tenant["headers"]).status_code == 200
    # Without Redis no process can hear of a revocation: the cache is not trusted, and every
    # request looks its key up.
    assert len(key_lookups) == 2
    sql("UPDATE api_keys SET revoked_at = now()")
    assert_error(client.get("/v1/subscriptions", headers=tenant["headers"]), 401, "unauthorized")


def test_a_revoked_key_is_refused_by_every_api_process_within_a_second(
    servers: Any, tenant: dict[str, Any], tmp_path: Any, own_processes: None
) -> None:
    import requests

    from scripts.embedded import free_port
    from scripts.harness import gunicorn, http_status, wait_until
    from tests.conftest import BASE_ENV
    from webhooks.db import session_scope
    from webhooks.services.tenants import list_keys, revoke_key

    port = free_port()
    env = dict(os.environ) | BASE_ENV
    env.update(
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis_url,
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        WEBHOOKS_API_KEY_CACHE_SECONDS="3600",
        WEBHOOKS_RATE_LIMIT_UNAUTHENTICATED="off",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    web = gunicorn(env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{port}/v1/subscriptions"
    try:
        wait_until(lambda: http_status(url), 60, message="gunicorn answering")
        # A new connection each time, so that both workers serve the key and cache it.
        for _ in range(10):
            resp = requests.get(url, headers=tenant["headers"], timeout=10)
            assert resp.status_code == 200, resp.text
        with session_scope() as session:
            (key,) = list_keys(session, tenant["id"])
            assert revoke_key(session, key.id)
        revoked_at = time.monotonic()
        statuses = []
        while time.monotonic() - revoked_at < 1.0:
            statuses.append(requests.get(url, headers=tenant["headers"], timeout=10).status_code)
        # The revocation is announced after its commit, before revoke_key's caller goes on.
        assert set(statuses) == {401}, statuses
        later = [requests.get(url, headers=tenant["headers"], timeout=10) for _ in range(10)]
        assert [r.status_code for r in later] == [401] * 10
    finally:
        web.kill()  # nothing to see in a graceful stop here, which takes a second or two


def test_a_batch_costs_one_per_event(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT="10/minute")

    def batch(n: int) -> Any:
        events = [{"event_type": "order.created", "payload": {"n": i}} for i in range(n)]
        return client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])

    resp = batch(4)
    assert resp.status_code == 202
    assert resp.headers["X-RateLimit-Remaining"] == "6"
    error = assert_error(batch(7), 429, "rate_limited")  # 4 + 7 > 10: nothing of it is stored
    assert error["details"]["cost"] == 7
    assert sql("SELECT count(*) FROM events") == [(4,)]
    resp = batch(5)
    assert resp.status_code == 202 and resp.headers["X-RateLimit-Remaining"] == "0"
    assert_error(publish(client, tenant, "order.created", {}), 429, "rate_limited")
    assert sql("SELECT count(*) FROM events") == [(9,)]


def test_a_batch_larger_than_the_whole_limit_says_so(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT="10/minute")
    events = [{"event_type": "order.created", "payload": {}}] * 11
    resp = client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])
    error = assert_error(resp, 429, "rate_limited")
    assert "more than the whole limit" in error["message"]
    assert error["details"]["cost"] == 11


def test_replay_costs_the_deliveries_it_requeues_and_stops_at_the_budget(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT="12/minute")
    sub = subscribe(client, tenant, "http://127.0.0.1:9/r", ["*"])  # 1
    events = [{"event_type": "order.created", "payload": {"n": i}} for i in range(6)]
    resp = client.post("/v1/events/batch", json={"events": events}, headers=tenant["headers"])
    assert resp.status_code == 202  # 1 + 6 = 7
    sql("UPDATE deliveries SET status = 'failed'")
    since = {"since": "2000-01-01T00:00:00Z"}
    path = f"/v1/subscriptions/{sub['id']}/replay"
    resp = client.post(path, json=since, headers=tenant["headers"])
    # 5 left: the replay requeues 5 of the 6 failed deliveries, and says more remain.
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json() == {"requeued": 5, "more": True}
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert sql("SELECT count(*) FROM deliveries WHERE status = 'pending'") == [(5,)]
    assert_error(client.post(path, json=since, headers=tenant["headers"]), 429, "rate_limited")
    # A retry costs one, the delivery it requeues.
    (failed,) = sql("SELECT id FROM deliveries WHERE status = 'failed'")
    retry = f"/v1/deliveries/{failed[0]}/retry"
    assert_error(client.post(retry, headers=tenant["headers"]), 429, "rate_limited")


def test_tenant_rate_limit_is_set_from_the_cli_and_applies_at_once(
    make_client: Callable[..., Any], tenant: dict[str, Any], other_tenant: dict[str, Any]
) -> None:
    client = make_client(WEBHOOKS_RATE_LIMIT="3/minute")
    runner = client.application.test_cli_runner()
    get = lambda t: client.get("/v1/subscriptions", headers=t["headers"])  # noqa: E731
    assert get(tenant).headers["X-RateLimit-Limit"] == "3"  # the key is cached from here on

    result = runner.invoke(args=["set-tenant-rate-limit", str(tenant["id"]), "5"])
    assert result.exit_code == 0, result.output
    assert "5 a minute" in result.output
    assert sql("SELECT rate_limit_per_minute FROM tenants WHERE id = :id", id=tenant["id"]) == [
        (5,)
    ]
    answers = [get(tenant) for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 4 + [429]
    assert answers[0].headers["X-RateLimit-Limit"] == "5"
    assert get(other_tenant).headers["X-RateLimit-Limit"] == "3"

    result = runner.invoke(args=["set-tenant-rate-limit", str(tenant["id"]), "default"])
    assert result.exit_code == 0, result.output
    assert get(tenant).headers["X-RateLimit-Limit"] == "3"

    for bad in ("0", "1.5", "lots", str(2**31)):
        result = runner.invoke(args=["set-tenant-rate-limit", str(tenant["id"]), bad])
        assert result.exit_code == 2 and "a whole number from 1" in result.output, result.output
    result = runner.invoke(args=["set-tenant-rate-limit", str(uuid.uuid4()), "5"])
    assert result.exit_code == 1 and "no tenant" in result.output


def test_default_rate_limit_is_6000_events_a_minute_per_tenant(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    """30 events/s from one application was refused at 600 a minute; 100/s now fits."""
    client = make_client()
    resp = publish(client, tenant, "order.created", {})
    assert resp.status_code == 202
    assert resp.headers["X-RateLimit-Limit"] == "6000"
    assert 55 <= int(resp.headers["X-RateLimit-Reset"]) - time.time() <= 61  # a minute's window


# --- outbound address guard ----------------------------------------------------------------

# Each form with the address it reaches; `{p}` is a port.
REFUSED = [
    ("http://127.0.0.1:{p}/", "loopback"),
    ("http://localhost:{p}/", "loopback"),
    ("http://2130706433:{p}/", "loopback"),  # 127.0.0.1 as one number
    ("http://0x7f.1:{p}/", "loopback"),  # hexadecimal, short form
    ("http://127.1:{p}/", "loopback"),  # short form
    ("http://0177.0.0.1:{p}/", "loopback"),  # octal
    ("http://[::1]:{p}/", "loopback"),
    ("http://10.0.0.1:{p}/", "private"),
    ("http://172.16.5.4:{p}/", "private"),
    ("http://192.168.1.1:{p}/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://100.64.0.1:{p}/", "carrier-grade NAT"),
    ("http://224.0.0.1:{p}/", "multicast"),
    ("http://[ff02::1]:{p}/", "multicast"),
    ("http://240.0.0.1:{p}/", "reserved"),
    ("http://0.0.0.0:{p}/", "unspecified"),
    ("http://0:{p}/", "unspecified"),
    ("http://[::]:{p}/", "unspecified"),
    ("http://[fd12:3456::1]:{p}/", "private"),  # IPv6 unique-local
    ("http://[fe80::1]:{p}/", "link-local"),
    ("http://[fec0::1]:{p}/", "site-local"),
    ("http://[::ffff:127.0.0.1]:{p}/", "IPv6 form of 127.0.0.1"),  # IPv4-mapped
    ("http://[::ffff:a9fe:a9fe]:{p}/", "IPv6 form of 169.254.169.254"),
    ("http://[64:ff9b::7f00:1]:{p}/", "IPv6 form of 127.0.0.1"),  # NAT64
    ("http://[64:ff9b::a00:1]:{p}/", "IPv6 form of 10.0.0.1"),
    ("http://[64:ff9b:1::808:808]:{p}/", "local-use NAT64"),
    ("http://[2002:7f00:1::1]:{p}/", "IPv6 form of 127.0.0.1"),  # 6to4
    ("http://[2002:c0a8:101::1]:{p}/", "IPv6 form of 192.168.1.1"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]:{p}/", "Teredo"),
]
MALFORMED = [
    ("ftp://example.com/", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("gopher://127.0.0.1:70/", "http or https"),
    ("http:///nohost", "no host"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://127.0.0.1:99999/", "malformed"),
    ("not a url", "http or https"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED + MALFORMED)
def test_refused_address_forms_answer_422_at_create_and_update_and_are_refused_at_delivery(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    url: str,
    reason: str,
) -> None:
    from webhooks.http import NOT_PUBLIC, Client

    client = make_client(WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    url = url.format(p=receiver.port)
    # A refused address is named to the tenant in the same words whatever it is (so refusals
    # cannot map internal DNS); the address and why go to the server's log.
    public = NOT_PUBLIC if (url, reason) not in MALFORMED else reason
    resp = client.post(
        "/v1/subscriptions", json={"url": url, "event_types": ["*"]}, headers=tenant["headers"]
    )
    error = assert_error(resp, 422, "validation_error")
    assert public in error["message"], error
    assert public in " ".join(error["details"]["fields"]["url"])
    if public == NOT_PUBLIC:
        assert reason not in json.dumps(error)
        assert reason in caplog.text
    assert sql("SELECT count(*) FROM subscriptions") == [(0,)]

    sub_id = subscribe(client, tenant, "https://1.1.1.1/", ["*"])["id"]  # public, no lookup
    resp = client.patch(f"/v1/subscriptions/{sub_id}", json={"url": url}, headers=tenant["headers"])
    assert public in assert_error(resp, 422, "validation_error")["message"]
    assert sql("SELECT url FROM subscriptions") == [("https://1.1.1.1/",)]

    # The delivery client checks again on its own (the worker's path, see the test below).
    response = Client(timeout=2, allow_private=False, body_cap=100).post(url, b"{}", {})
    assert response.result is AttemptResult.REFUSED, response
    assert public in (response.error or "")
    if public == NOT_PUBLIC:
        assert reason not in (response.error or "")
    assert response.status_code is None
    assert receiver.received == []


def test_worker_refuses_targets_that_became_forbidden_after_create(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    receiver: Receiver,
    start_worker: Callable[..., Any],
) -> None:
    """Rows created while private targets were allowed reach nothing once they are not: every
    attempt is recorded as refused, and the receiver hears nothing."""
    from webhooks.http import NOT_PUBLIC

    client = make_client(WEBHOOKS_ALLOW_PRIVATE_TARGETS="true")
    forms = [u for u, _ in REFUSED[:6]]  # the loopback spellings that reach the receiver
    for i, form in enumerate(forms):
        subscribe(client, tenant, form.format(p=receiver.port) + f"s{i}", ["*"])
    worker = start_worker(WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    event = publish(client, tenant, "order.created", {"n": 1}).get_json()
    assert event["deliveries"] == len(forms)

    def all_failed() -> list[dict[str, Any]] | None:
        rows = client.get(f"/v1/events/{event['id']}", headers=tenant["headers"]).get_json()
        done = [d for d in rows["deliveries"] if d["status"] == "failed"]
        return rows["deliveries"] if len(done) == len(forms) else None

    wait_until(all_failed, timeout=60, message="every delivery failed")
    for delivery in all_failed() or []:
        detail = client.get(
            f"/v1/deliveries/{delivery['id']}", headers=tenant["headers"]
        ).get_json()
        assert detail["attempts"], detail
        for attempt in detail["attempts"]:
            assert attempt["result"] == "refused", attempt
            assert attempt["status_code"] is None
            assert attempt["error"] == NOT_PUBLIC, attempt
    assert receiver.received == []
    # The detail is in the worker's log, never in what the tenant reads.
    assert "resolves to 127.0.0.1, a loopback address" in worker.output()
    assert "Traceback" not in worker.output()


Answer = str | list[str]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, list[Answer]], list[Answer]]:
    """Script the answers for one host name: each lookup takes the next answer (one address or
    several; the last answer repeats). Return the log of that name's lookups. Other names
    resolve as usual."""
    real = socket.getaddrinfo
    scripts: dict[str, list[Answer]] = {}
    log: list[Answer] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in scripts:
            return real(host, port, *args, **kwargs)
        answers = scripts[name]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        log.append(answer)
        infos = []
        for address in [answer] if isinstance(answer, str) else answer:
            if ":" in address:
                infos.append(
                    (
                        socket.AF_INET6,
                        socket.SOCK_STREAM,
                        socket.IPPROTO_TCP,
                        "",
                        (address, int(port or 0), 0, 0),
                    )
                )
            else:
                infos.append(
                    (
                        socket.AF_INET,
                        socket.SOCK_STREAM,
                        socket.IPPROTO_TCP,
                        "",
                        (address, int(port or 0)),
                    )
                )
        return infos

    def script(name: str, answers: list[Answer]) -> list[Answer]:
        scripts[name] = list(answers)
        return log

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return script


def test_rebinding_host_passes_at_create_and_is_refused_at_delivery(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    receiver: Receiver,
    dns: Callable[[str, list[Answer]], list[Answer]],
) -> None:
    from webhooks.http import NOT_PUBLIC, Client

    lookups = dns("rebind.example", ["93.184.216.34", "127.0.0.1"])
    client = make_client(WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    sub = subscribe(client, tenant, f"http://rebind.example:{receiver.port}/hook", ["*"])
    assert lookups == ["93.184.216.34"]

    response = Client(timeout=2, allow_private=False, body_cap=100).post(sub["url"], b"{}", {})
    assert lookups == ["93.184.216.34", "127.0.0.1"]
    assert response.result is AttemptResult.REFUSED
    assert response.error == NOT_PUBLIC
    assert receiver.received == []


def test_delivery_connects_to_the_address_it_checked_without_a_second_lookup(
    receiver: Receiver, dns: Callable[[str, list[Answer]], list[Answer]]
) -> None:
    """The first lookup answers the receiver's address; any later one answers an address where
    nothing listens. The request arrives, by the checked address, with the name as Host."""
    from webhooks.http import Client

    lookups = dns("pinned.example", ["127.0.0.1", "127.0.0.2"])
    client = Client(timeout=2, allow_private=True, body_cap=100)
    url = f"http://pinned.example:{receiver.port}/in"
    response = client.post(url, b"{}", {})
    assert response.result is AttemptResult.SUCCESS, response
    assert lookups == ["127.0.0.1"]  # one lookup, none again while connecting
    (got,) = receiver.wait_for("/in", 1)
    assert got.headers["host"] == f"pinned.example:{receiver.port}"

    # Every attempt resolves and checks afresh, and goes where that answer says, even with a
    # kept-alive connection to the old address at hand.
    response = client.post(url, b"{}", {})
    assert lookups == ["127.0.0.1", "127.0.0.2"]
    assert response.result is AttemptResult.CONNECTION_ERROR, response
    assert len(receiver.at("/in")) == 1


def test_a_host_with_any_refused_address_is_refused(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    dns: Callable[[str, list[Answer]], list[Answer]],
) -> None:
    from webhooks.http import AddressRefused, resolve

    dns("mixed.example", [["93.184.216.34", "10.1.2.3"]])
    with pytest.raises(AddressRefused) as info:
        resolve("mixed.example", 80, allow_private=False)
    assert info.value.detail == "mixed.example resolves to 10.1.2.3, a private address"
    client = make_client(WEBHOOKS_ALLOW_PRIVATE_TARGETS="false")
    resp = client.post(
        "/v1/subscriptions",
        headers=tenant["headers"],
        json={"url": "https://mixed.example/", "event_types": ["*"]},
    )
    assert (
        "the host does not resolve to public addresses only" in assert_error(resp, 422)["message"]
    )


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    from webhooks.http import Client

    receiver.plan("/moved", then=Reply(302, headers={"location": receiver.url("/target")}))
    response = Client(timeout=2, allow_private=True, body_cap=100).post(
        receiver.url("/moved"), b"{}", {}
    )
    assert response.result is AttemptResult.HTTP_ERROR
    assert response.status_code == 302
    assert "not followed" in (response.error or "")
    time.sleep(0.2)
    assert receiver.at("/target") == []


# --- signing secrets -----------------------------------------------------------------------


def test_signing_secrets_are_encrypted_at_rest_and_shown_only_on_create_and_rotate(
    client: Any, tenant: dict[str, Any]
) -> None:
    from webhooks.crypto import decrypt_secret

    created = subscribe(client, tenant, "http://127.0.0.1:9/x", ["*"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    rotated = client.post(
        f"/v1/subscriptions/{created['id']}/rotate-secret", headers=tenant["headers"]
    ).get_json()["secret"]
    assert rotated != secret

    (row,) = sql(
        "SELECT row_to_json(s)::text, secret_ciphertext, previous_secret_ciphertext "
        "FROM subscriptions s"
    )
    stored, current, previous = row[0], bytes(row[1]), bytes(row[2])
    for plain in (secret, rotated):
        for spelling in (plain.encode(), base64.b64decode(plain[6:]), plain[6:].encode()):
            assert spelling not in current and spelling not in previous
        assert plain[6:] not in stored and base64.b64decode(plain[6:]).hex() not in stored
    associated = created["id"].encode()
    assert decrypt_secret(current, associated) == rotated
    assert decrypt_secret(previous, associated) == secret
    # Bound to its subscription: a ciphertext copied onto another row does not decrypt.
    with pytest.raises(ValueError):
        decrypt_secret(current, str(uuid.uuid4()).encode())

    sub_path = f"/v1/subscriptions/{created['id']}"
    answers = [
        client.get(sub_path, headers=tenant["headers"]),
        client.get("/v1/subscriptions", headers=tenant["headers"]),
        client.patch(sub_path, json={"description": "d"}, headers=tenant["headers"]),
        client.get(f"{sub_path}/health", headers=tenant["headers"]),
    ]
    for resp in answers:
        assert resp.status_code == 200
        body = resp.get_data(as_text=True)
        assert secret[6:] not in body and rotated[6:] not in body
        if resp is answers[2]:  # a PATCH answers `secret`, null unless the scheme changed
            assert resp.get_json()["secret"] is None
        else:
            assert "secret" not in body


def test_secrets_do_not_decrypt_under_another_key(
    client: Any, tenant: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhooks.crypto import decrypt_secret

    created = subscribe(client, tenant, "http://127.0.0.1:9/x", ["*"])
    (blob,) = sql("SELECT secret_ciphertext FROM subscriptions")[0]
    monkeypatch.setenv("WEBHOOKS_SECRET_KEY", base64.urlsafe_b64encode(b"z" * 32).decode())
    reset_settings()
    with pytest.raises(ValueError, match="WEBHOOKS_SECRET_KEY"):
        decrypt_secret(bytes(blob), created["id"].encode())


def test_rotation_signs_with_both_secrets_during_the_grace_period_then_only_the_new(
    make_client: Callable[..., Any],
    tenant: dict[str, Any],
    receiver: Receiver,
    start_worker: Callable[..., Any],
) -> None:
    grace = 600.0
    client = make_client(WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS=str(grace))
    worker = start_worker()
    sub = subscribe(client, tenant, receiver.url("/hook"), ["*"])
    old = sub["secret"]
    rotated_at = time.time()
    new = client.post(
        f"/v1/subscriptions/{sub['id']}/rotate-secret", headers=tenant["headers"]
    ).get_json()["secret"]

    publish(client, tenant, "order.created", {"n": 1})
    (during,) = receiver.wait_for("/hook", 1, timeout=30)
    assert during.at < rotated_at + grace, "the first delivery came too late to test the grace"
    assert len(during.headers["webhook-signature"].split()) == 2
    assert Webhook(old).verify(during.body, during.headers)["data"] == {"n": 1}
    assert Webhook(new).verify(during.body, during.headers)["data"] == {"n": 1}

    # The grace ends at the rotation plus WEBHOOKS_SECRET_ROTATION_GRACE_SECONDS; rather than
    # wait for it, move that end into the past.
    ((ends_in,),) = sql(
        "SELECT extract(epoch FROM previous_secret_expires_at) FROM subscriptions WHERE id = :id",
        id=sub["id"],
    )
    assert rotated_at + grace - 1 < float(ends_in) < time.time() + grace
    sql(
        "UPDATE subscriptions SET previous_secret_expires_at = now() - interval '1 second'"
        " WHERE id = :id",
        id=sub["id"],
    )
    publish(client, tenant, "order.created", {"n": 2})
    after = receiver.wait_for("/hook", 2, timeout=30)[1]
    assert len(after.headers["webhook-signature"].split()) == 1
    assert Webhook(new).verify(after.body, after.headers)["data"] == {"n": 2}
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)
    log = worker.output()
    assert old[6:] not in log and new[6:] not in log


# --- custom headers and input limits -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "webhook-id",
        "Webhook-Signature",
        "webhook-timestamp",
        "webhook-anything",
        "Host",
        "Content-Length",
        "content-type",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "Trailer",
        "User-Agent",
    ],
)
def test_reserved_custom_headers_are_refused(
    client: Any, tenant: dict[str, Any], name: str
) -> None:
    resp = client.post(
        "/v1/subscriptions",
        headers=tenant["headers"],
        json={"url": "http://127.0.0.1:9/", "event_types": ["*"], "headers": {name: "x"}},
    )
    error = assert_error(resp, 422, "validation_error")
    assert f'"{name}": "is set by the service' in json.dumps(error["details"]["fields"])


def test_custom_headers_that_are_not_reserved_are_accepted_and_answered_redacted(
    client: Any, tenant: dict[str, Any]
) -> None:
    resp = client.post(
        "/v1/subscriptions",
        headers=tenant["headers"],
        json={
            "url": "http://127.0.0.1:9/",
            "event_types": ["*"],
            "headers": {"Authorization": "Bearer theirs", "X-Team": "payments"},
        },
    )
    assert resp.status_code == 201, resp.get_json()
    # Sent with every delivery (test_hardening proves it); never shown again.
    assert resp.get_json()["headers"] == {"Authorization": "********", "X-Team": "********"}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


SUB = {"url": "http://127.0.0.1:9/", "event_types": ["*"]}
BAD_INPUTS = [
    ("/v1/subscriptions", {**SUB, "url": "http://127.0.0.1:9/" + "a" * 2048}, "url"),
    ("/v1/subscriptions", {**SUB, "event_types": [f"t{i}" for i in range(101)]}, "event_types"),
    ("/v1/subscriptions", {**SUB, "event_types": []}, "event_types"),
    ("/v1/subscriptions", {**SUB, "event_types": ["bad type"]}, "event_types"),
    ("/v1/subscriptions", {**SUB, "headers": {f"X-H{i}": "v" for i in range(21)}}, "headers"),
    ("/v1/subscriptions", {**SUB, "headers": {"X-Big": "v" * 1025}}, "headers"),
    ("/v1/subscriptions", {**SUB, "headers": {"X-Split": "a\r\nInjected: 1"}}, "headers"),
    ("/v1/subscriptions", {**SUB, "headers": {"Bad Name": "v"}}, "headers"),
    ("/v1/subscriptions", {**SUB, "headers": {"X-Num": 5}}, "headers"),
    ("/v1/subscriptions", {**SUB, "unknown": 1}, "unknown"),
    ("/v1/events", {"event_type": "order created", "payload": {}}, "event_type"),
    ("/v1/events", {"event_type": ".order", "payload": {}}, "event_type"),
    ("/v1/events", {"event_type": "order..created", "payload": {}}, "event_type"),
    ("/v1/events", {"event_type": "order.created\n", "payload": {}}, "event_type"),
    ("/v1/events", {"event_type": "o" * 201, "payload": {}}, "event_type"),
    ("/v1/events", {"event_type": "a", "payload": _nested(40)}, "payload"),
    ("/v1/events", {"event_type": "a"}, "payload"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_INPUTS)
def test_input_limits_answer_422_naming_the_field(
    client: Any, tenant: dict[str, Any], path: str, body: dict[str, Any], field: str
) -> None:
    error = assert_error(
        client.post(path, json=body, headers=tenant["headers"]), 422, "validation_error"
    )
    assert field in error["details"]["fields"], error
    assert sql("SELECT (SELECT count(*) FROM subscriptions) + (SELECT count(*) FROM events)") == [
        (0,)
    ]


def test_bodies_over_the_limit_answer_413_and_other_bad_bodies_400_or_415(
    make_client: Callable[..., Any], tenant: dict[str, Any]
) -> None:
    client = make_client(WEBHOOKS_MAX_PAYLOAD_BYTES="1024")
    headers = tenant["headers"]
    big = {"event_type": "a", "payload": {"blob": "x" * 1100}}
    error = assert_error(
        client.post("/v1/events", json=big, headers=headers), 413, "payload_too_large"
    )
    assert error["details"]["limit"] == 1024
    assert publish(client, tenant, "a", {"blob": "x" * 900}).status_code == 202
    assert_error(
        client.post(
            "/v1/subscriptions", json={**SUB, "description": "d" * 70_000}, headers=headers
        ),
        413,
        "payload_too_large",
    )
    assert_error(
        client.post(
            "/v1/events", data="{not json", headers=headers, content_type="application/json"
        ),
        400,
        "malformed_json",
    )
    assert_error(
        client.post(
            "/v1/events",
            data="event_type=a",
            headers=headers,
            content_type="application/x-www-form-urlencoded",
        ),
        415,
    )
    assert_error(client.post("/v1/events", json=["a"], headers=headers), 422, "validation_error")
    assert publish(client, tenant, "a", _nested(20)).status_code == 202


def test_api_answers_are_never_cached_secrets_least_of_all(client, tenant):
    created = client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/x", "event_types": ["*"]},
        headers=tenant["headers"],
    )
    assert created.status_code == 201 and created.get_json()["secret"]
    assert created.headers["Cache-Control"] == "no-store"
    sub = created.get_json()["id"]
    rotated = client.post(f"/v1/subscriptions/{sub}/rotate-secret", headers=tenant["headers"])
    assert rotated.headers["Cache-Control"] == "no-store"
    assert (
        client.get("/v1/subscriptions", headers=tenant["headers"]).headers["Cache-Control"]
        == "no-store"
    )
