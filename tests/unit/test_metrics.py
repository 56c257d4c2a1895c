"""Prometheus metrics: every known label value is exported before its first increment."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest

from webhooks import metrics
from webhooks.models import AttemptResult

EXPECTED = [
    *(f'webhooks_circuit_transitions_total{{to="{s}"}}' for s in ("open", "half_open", "closed")),
    *(
        f'webhooks_watchdog_requeued_total{{reason="{r}"}}'
        for r in (
            "lease_expired",
            "lost",
            "due",
            "subscription_disabled",
            "circuit_closed",
            "probe",
        )
    ),
    *(f'webhooks_deliveries_total{{outcome="{o}"}}' for o in ("delivered", "failed")),
    *(
        f'webhooks_delivery_attempts_total{{result="{r}"}}'
        for r in [*(r.value for r in AttemptResult), "circuit_open"]
    ),
]


@pytest.mark.parametrize("series", EXPECTED)
def test_labelled_counter_series_exist_before_their_first_increment(series):
    exported = generate_latest(REGISTRY).decode()
    assert f"{series} " in exported, series


def test_every_attempt_result_is_a_known_label_value():
    assert {r.value for r in AttemptResult} <= set(metrics.ATTEMPT_RESULTS)
