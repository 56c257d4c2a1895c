"""Unit tests: no servers; settings come from the environment set in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import reset_settings
from tests.support import cores


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Read the settings anew in every test, and forget what a test changed."""
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(autouse=True)
def _beside_others() -> Iterator[None]:
    """Under pytest-xdist, wait while an integration test marked `alone` runs."""
    with cores(exclusive=False, lock="tests"):
        yield


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set environment variables for this test and make get_settings() see them."""

    def apply(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()

    return apply
