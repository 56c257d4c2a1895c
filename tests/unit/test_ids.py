"""IDs made in Python are UUIDv7 (RFC 9562): they sort by the time they were made."""

from __future__ import annotations

import time

from tests.support import assert_uuid7
from webhooks.db import uuid7


def test_python_ids_have_the_uuid7_layout_and_the_current_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    for value in ids:
        assert_uuid7(value, before, after)


def test_python_ids_sort_in_the_order_they_were_made() -> None:
    # Many within one millisecond too: the random part alone would not keep their order.
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
