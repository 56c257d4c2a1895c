"""Hardening (issue 13): what an outside review and a hostile tenant found, each fix proven."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import reset_settings
from tests.integration.conftest import subscribe


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Build an app (and its test client) under extra environment settings."""

    def build(**env: str) -> Any:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        from webhooks import create_app

        return create_app({"TESTING": True}).test_client()

    return build


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
