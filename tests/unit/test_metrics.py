"""Prometheus metrics: every known label value is exported before its first increment."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest

from webhooks import metrics
from webhooks.models import AttemptResult

# Each counter's name as exported, beside the label values webhooks.metrics declares for it.
EXPECTED = [
    *(f'webhooks_deliveries_total{{outcome="{o}"}}' for o in metrics.DELIVERY_OUTCOMES),
    *(f'webhooks_delivery_attempts_total{{result="{r}"}}' for r in metrics.ATTEMPT_RESULTS),
    *(f'webhooks_circuit_transitions_total{{to="{s}"}}' for s in metrics.CIRCUIT_STATES),
    *(f'webhooks_watchdog_requeued_total{{reason="{r}"}}' for r in metrics.WATCHDOG_REASONS),
    *(f'webhooks_scheduler_throttled_total{{reason="{r}"}}' for r in metrics.THROTTLE_REASONS),
]


@pytest.mark.parametrize("series", EXPECTED)
def test_labelled_counter_series_exist_before_their_first_increment(series):
    exported = generate_latest(REGISTRY).decode()
    assert f"{series} " in exported, series


def test_every_attempt_result_is_a_known_label_value():
    assert {r.value for r in AttemptResult} <= set(metrics.ATTEMPT_RESULTS)
