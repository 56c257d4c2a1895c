"""JSON log lines, and the request log with its X-Request-ID."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest

from webhooks.logs import JsonFormatter, configure_logging


def _record(msg: str = "hello %s", args: Any = ("world",), **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("webhooks.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_with_the_context_fields() -> None:
    line = JsonFormatter().format(
        _record(delivery_id="d-1", attempt=2, duration_ms=1.5, when=object())
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "hello world"
    assert entry["level"] == "info"
    assert entry["logger"] == "webhooks.test"
    assert re.match(r"\d{4}-\d\d-\d\dT", entry["ts"])
    assert (entry["delivery_id"], entry["attempt"], entry["duration_ms"]) == ("d-1", 2, 1.5)
    assert entry["when"].startswith("<object object")  # not serializable: its str()
    # LogRecord's own attributes stay out of the line.
    assert not {"args", "pathname", "lineno", "exc_info", "levelno"} & set(entry)


def test_json_formatter_keeps_a_traceback_on_the_same_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = _record("failed", ())
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_configure_logging_installs_one_json_handler_however_often_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setenv("WEBHOOKS_LOG_LEVEL", "debug")
    level = root.level
    try:
        configure_logging()
        configure_logging()
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)


@pytest.fixture
def client() -> Any:
    from webhooks import create_app

    return create_app({"TESTING": True}).test_client()


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(r))
        for r in caplog.records
        if r.name == "webhooks.access" and r.getMessage() == "request"
    ]


def test_request_id_is_taken_from_the_header_returned_and_logged_once(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="webhooks.access")
    resp = client.get("/healthz", headers={"X-Request-ID": "edge-7f3a.b_c:9"})
    assert resp.headers["X-Request-ID"] == "edge-7f3a.b_c:9"
    (line,) = _request_lines(caplog)
    assert line["request_id"] == "edge-7f3a.b_c:9"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)
    assert line["duration_ms"] >= 0


@pytest.mark.parametrize(
    "bad",
    ["has space", "quote\"'", "x" * 129, "a{b}", ""],
    ids=["space", "quotes", "too-long", "braces", "empty"],
)
def test_a_bad_or_missing_request_id_is_replaced(client, caplog, bad: str) -> None:
    caplog.set_level(logging.INFO, logger="webhooks.access")
    resp = client.get("/healthz", headers={"X-Request-ID": bad} if bad else {})
    request_id = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    (line,) = _request_lines(caplog)
    assert line["request_id"] == request_id


def test_every_request_gets_its_own_request_id(client) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_request_log_holds_neither_credentials_nor_query_nor_body(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="webhooks.access")
    client.post(
        "/v1/events?token=query-secret",
        json={"event_type": "x", "payload": {"card": "body-secret"}},
        headers={"Authorization": "Bearer whk_header-secret"},
    )
    (line,) = _request_lines(caplog)
    assert line["path"] == "/v1/events"
    text = json.dumps(line)
    for secret in ("query-secret", "body-secret", "header-secret"):
        assert secret not in text
