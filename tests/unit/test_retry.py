"""The retry schedule: WEBHOOKS_RETRY_DELAYS, jitter, and Retry-After within its cap."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from webhooks.http import parse_retry_after
from webhooks.services.delivery import retry_delay


def test_default_schedule_is_2_4_8_16_32_seconds_then_spent(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS=None, WEBHOOKS_RETRY_JITTER="0")
    assert [retry_delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 32, None]


def test_configured_delays_are_used_in_order_and_their_count_is_the_retry_budget(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS="1, 3,0.5", WEBHOOKS_RETRY_JITTER="0")
    assert [retry_delay(n) for n in (1, 2, 3)] == [1, 3, 0.5]
    assert retry_delay(4) is None
    assert retry_delay(10) is None


def test_empty_schedule_means_no_retries(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS=",", WEBHOOKS_RETRY_JITTER="0")
    assert retry_delay(1) is None


def test_jitter_only_lengthens_each_delay_by_at_most_its_fraction(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS="10,20", WEBHOOKS_RETRY_JITTER="0.25")
    random.seed(1234)
    firsts = [retry_delay(1) for _ in range(500)]
    seconds = [retry_delay(2) for _ in range(500)]
    assert all(10 <= d <= 12.5 for d in firsts)
    assert all(20 <= d <= 25 for d in seconds)
    # Jitter spreads the waits (so retries of many deliveries do not line up).
    assert max(firsts) - min(firsts) > 1.5
    assert len(set(firsts)) > 100
    assert retry_delay(3) is None


def test_retry_after_longer_than_the_schedule_is_honoured(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS="1,2", WEBHOOKS_RETRY_JITTER="0")
    assert retry_delay(1, retry_after=30) == 30


def test_retry_after_shorter_than_the_schedule_does_not_shorten_it(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS="5,10", WEBHOOKS_RETRY_JITTER="0")
    assert retry_delay(2, retry_after=1) == 10


def test_retry_after_is_clamped_by_the_configured_maximum(setenv):
    setenv(
        WEBHOOKS_RETRY_DELAYS="1,2",
        WEBHOOKS_RETRY_JITTER="0",
        WEBHOOKS_RETRY_AFTER_MAX_SECONDS="60",
    )
    assert retry_delay(1, retry_after=86_400) == 60


def test_retry_after_does_not_extend_a_spent_schedule(setenv):
    setenv(WEBHOOKS_RETRY_DELAYS="1", WEBHOOKS_RETRY_JITTER="0")
    assert retry_delay(2, retry_after=5) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_retry_after_header_in_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_retry_after_header_as_http_date():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
