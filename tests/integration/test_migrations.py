"""The Alembic migrations build exactly the schema the models describe, and go both ways."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

import webhooks.models  # noqa: F401  (registers the tables)
from tests.support import alembic_config, scratch_database
from webhooks.db import Base, get_engine

TABLES = {"tenants", "api_keys", "subscriptions", "events", "deliveries", "attempts"}


def differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, Base.metadata)


def partial_indexes(connection: Connection) -> dict[str, str]:
    """Return each index that has a WHERE clause, with its definition."""
    rows = connection.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    )
    return {name: definition for name, definition in rows if " WHERE " in definition}


def expected_partial_indexes() -> set[str]:
    return {
        index.name
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.dialect_options["postgresql"].get("where") is not None
    }


def test_database_is_at_the_single_head_revision(servers):
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"the migrations branch: {heads}"
    with get_engine().connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == heads[0]


def test_autogenerate_finds_no_difference_between_models_and_database(servers):
    with get_engine().connect() as conn:
        assert differences(conn) == []
        # Autogenerate does not compare WHERE clauses: check the partial indexes exist as such.
        assert "ix_deliveries_due" in expected_partial_indexes()
        assert set(partial_indexes(conn)) == expected_partial_indexes()


def test_downgrade_to_base_and_upgrade_again(servers):
    # A scratch database, so the shared test database is not disturbed.
    with scratch_database(servers, "webhooks_migrations") as engine:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= TABLES
            assert differences(conn) == []
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
            assert MigrationContext.configure(conn).get_current_revision() is None
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            assert differences(conn) == []
            assert set(partial_indexes(conn)) == expected_partial_indexes()


def test_an_existing_database_upgrades_and_its_data_routes_as_before(servers, monkeypatch):
    """A database at the first revision, with subscriptions and an event, upgrades to head;
    its subscriptions get what they got (no consumer, channel or filter), `*` still matches,
    and an idempotency key stored before the upgrade still replays its event."""
    import hashlib
    import json
    import uuid

    from tests.conftest import reset_settings
    from webhooks import create_app
    from webhooks.crypto import encrypt_secret
    from webhooks.services.tenants import hash_key

    key = "whk_" + "upgrade" * 6
    tenant_id, specific, everything, disabled, event_id = (uuid.uuid4() for _ in range(5))
    payload = {"order": 1}
    old_hash = hashlib.sha256(
        json.dumps(["order.created", payload], sort_keys=True, separators=(",", ":")).encode()
    ).digest()
    name = "webhooks_upgrade"
    with scratch_database(servers, name) as engine:
        try:
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "0001")
            with engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO tenants (id, name) VALUES (:t, 'old')"), {"t": tenant_id}
                )
                conn.execute(
                    text(
                        "INSERT INTO api_keys (id, tenant_id, prefix, key_hash)"
                        " VALUES (:id, :t, 'whk_upgr', :h)"
                    ),
                    {"id": uuid.uuid4(), "t": tenant_id, "h": hash_key(key)},
                )
                for sub_id, types, status in (
                    (specific, ["order.created"], "active"),
                    (everything, ["*"], "active"),
                    (disabled, ["order.created"], "disabled"),
                ):
                    conn.execute(
                        text(
                            "INSERT INTO subscriptions (id, tenant_id, url, event_types, status,"
                            " secret_ciphertext) VALUES (:id, :t, 'http://127.0.0.1:9/x', :types,"
                            " :status, :secret)"
                        ),
                        {
                            "id": sub_id,
                            "t": tenant_id,
                            "types": types,
                            "status": status,
                            "secret": encrypt_secret("whsec_x", str(sub_id).encode()),
                        },
                    )
                conn.execute(
                    text(
                        "INSERT INTO events (id, tenant_id, event_type, payload, idempotency_key,"
                        " request_hash) VALUES (:id, :t, 'order.created', :p, 'k1', :h)"
                    ),
                    {"id": event_id, "t": tenant_id, "p": json.dumps(payload), "h": old_hash},
                )
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "head")
            with engine.connect() as conn:
                assert differences(conn) == []

            monkeypatch.setenv("DATABASE_URL", servers.pg.url(name))
            reset_settings()
            client = create_app({"TESTING": True}).test_client()
            headers = {"Authorization": f"Bearer {key}"}
            sub = client.get(f"/v1/subscriptions/{specific}", headers=headers).get_json()
            assert (sub["consumer"], sub["channels"], sub["filter"]) == (None, [], None)

            resp = client.post(
                "/v1/events", json={"event_type": "order.created", "payload": {}}, headers=headers
            )
            assert resp.status_code == 202
            detail = client.get(f"/v1/events/{resp.get_json()['id']}", headers=headers).get_json()
            assert {d["subscription_id"] for d in detail["deliveries"]} == {
                str(specific),
                str(everything),
            }
            replay = client.post(
                "/v1/events",
                json={"event_type": "order.created", "payload": payload},
                headers={**headers, "Idempotency-Key": "k1"},
            )
            assert replay.status_code == 202 and replay.get_json()["id"] == str(event_id)
            assert replay.headers["Idempotent-Replayed"] == "true"
            other = client.post(
                "/v1/events",
                json={"event_type": "order.created", "payload": {"order": 2}},
                headers={**headers, "Idempotency-Key": "k1"},
            )
            assert other.status_code == 409
        finally:
            # Back to the test database's settings before the scratch database is dropped.
            monkeypatch.undo()
            reset_settings()
            from webhooks.db import get_engine as current_engine

            current_engine().dispose()


def test_stored_filters_are_compiled_again_to_leave_nested_arrays_out(servers):
    """0010: filters saved before it match as the compiler now does (nested arrays left out)."""
    import uuid

    tenant_id, sub_id = uuid.uuid4(), uuid.uuid4()
    with scratch_database(servers, "webhooks_filters_0010") as engine:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "20261130_0009")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, 't')"), {"t": tenant_id})
            conn.execute(
                text(
                    "INSERT INTO subscriptions (id, tenant_id, url, event_types, status,"
                    " secret_ciphertext, filter, filter_path) VALUES (:s, :t, 'http://x/',"
                    " '{*}', 'active', '\\x00', '{\"v\": 3}',"
                    " CAST('exists($.\"v\" ? (@ == 3))' AS jsonpath))"
                ),
                {"s": sub_id, "t": tenant_id},
            )
        nested = text("SELECT CAST('{\"v\": [[3]]}' AS jsonb) @@ filter_path FROM subscriptions")
        with engine.connect() as conn:
            assert conn.execute(nested).scalar_one() is True  # the old path looks inside
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            assert conn.execute(nested).scalar_one() is False
            flat = text("SELECT CAST('{\"v\": [1, 3]}' AS jsonb) @@ filter_path FROM subscriptions")
            assert conn.execute(flat).scalar_one() is True
