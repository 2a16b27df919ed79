"""``PerUserLimit``: the one per-user limit dependency of the features (orders, tools, backtests, alerts).

Each feature's 429 is tested over HTTP in its own tests (e.g. ``tests/alerts/test_enqueue.py``); here, what
the factory itself promises: a setting name that holds no limit fails when the route is defined, not as a
500 on the first request, and the dependency is named for the OpenAPI document and the logs."""

from __future__ import annotations

import pytest

from app.alerts.deps import AlertRateLimit
from app.auth.deps import PerUserLimit


def test_a_setting_that_holds_no_limit_fails_at_definition() -> None:
    with pytest.raises(ValueError, match="rate_limit_order'"):
        PerUserLimit("rate_limit_order", name="orders")  # the typo of rate_limit_orders


def test_the_dependency_is_named_for_its_limit() -> None:
    dependency = AlertRateLimit.__metadata__[0].dependency
    assert dependency.__name__ == "alerts_rate_limit"
    assert dependency.__doc__ == "RATE_LIMIT_ALERTS per user (429 + Retry-After past it)."
