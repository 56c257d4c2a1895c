"""IDs made in SQL (deliveries, by uuidv7()) have the same UUIDv7 layout as those made in
Python, so that ids of both kinds sort by the time they were made."""

from __future__ import annotations

import time

from sqlalchemy import text

from tests.conftest import Servers
from tests.support import assert_uuid7
from webhooks.db import get_engine, uuid7


def test_sql_ids_have_the_uuid7_layout_and_the_current_milliseconds(servers: Servers) -> None:
    before = time.time_ns() // 1_000_000
    with get_engine().connect() as conn:
        ids = conn.execute(text("SELECT uuidv7() FROM generate_series(1, 1000)")).scalars().all()
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for value in ids:
        assert_uuid7(value, before, after)


def test_python_and_sql_ids_sort_by_the_time_they_were_made(servers: Servers) -> None:
    made = []
    with get_engine().connect() as conn:
        for _ in range(5):
            made.append(uuid7())
            time.sleep(0.002)  # the next one falls in a later millisecond
            made.append(conn.execute(text("SELECT uuidv7()")).scalar_one())
            time.sleep(0.002)
    assert made == sorted(made)
