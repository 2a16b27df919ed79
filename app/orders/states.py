"""The order state machine: which status may follow which, and what the reconciler still watches.

Local statuses are the broker's (``BrokerOrderStatus``) plus two of our own:

* ``submitting`` — phase (a) committed, the broker call is running (or the process died during it);
* ``pending_reconciliation`` — the broker call ended with an unknown outcome (timeout after sending,
  5xx, connection lost): the reconciler looks the order up by ``client_order_id``.

``rejected`` has three causes, kept in ``reject_reason``'s event: the broker refused it (definitive),
nothing was sent (connection failed first, or the breaker was open: definitive), or the broker still did
not know it after ``RECONCILE_GRACE_SECONDS`` (``not_found_after_grace``). Only the last may be
*revived*: if the broker later shows the order, it moves to the broker's status with a ``revived`` event
(``orders_revived_total``), never silently dropped.

Every change of status (and every change of the fill) writes one ``order_events`` row in the same
statement or transaction (``repository.py``), and one log line (``service.log_transition``).
"""

from __future__ import annotations

from app.providers.broker import BrokerOrderStatus

SUBMITTING = "submitting"
PENDING_RECONCILIATION = "pending_reconciliation"
REJECTED = BrokerOrderStatus.REJECTED.value

BROKER_STATUSES = frozenset(s.value for s in BrokerOrderStatus)
STATUSES = BROKER_STATUSES | {SUBMITTING, PENDING_RECONCILIATION}
UNKNOWN_OUTCOME = frozenset({SUBMITTING, PENDING_RECONCILIATION})
# At the broker and not ended: their fills are refreshed by the reconciler.
OPEN = frozenset(s.value for s in BrokerOrderStatus if not s.is_terminal)
TERMINAL = frozenset(s.value for s in BrokerOrderStatus if s.is_terminal)

# Why an order was rejected (the event's reason).
REJECTED_BY_BROKER = "broker_rejected"
REJECTED_NOT_SENT = "not_sent"
REJECTED_AFTER_GRACE = "not_found_after_grace"

_ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({SUBMITTING}),
    SUBMITTING: BROKER_STATUSES | {PENDING_RECONCILIATION},
    PENDING_RECONCILIATION: BROKER_STATUSES,
    # Open orders move on as the broker reports (fills, cancel, expiry); the same status again is a fill
    # update (partially_filled → partially_filled with more filled).
    **{s: BROKER_STATUSES for s in OPEN},
    # Terminal at the broker: nothing follows, except the revival of a grace-period rejection (checked
    # by the caller, which knows the reason).
    REJECTED: BROKER_STATUSES - {REJECTED},
}


class IllegalTransition(Exception):
    def __init__(self, from_status: str | None, to_status: str) -> None:
        super().__init__(f"order status {from_status!r} cannot become {to_status!r}")


def check_transition(from_status: str | None, to_status: str) -> None:
    """Raise ``IllegalTransition`` unless ``from_status`` may become ``to_status``."""
    if to_status not in _ALLOWED.get(from_status, frozenset()):
        raise IllegalTransition(from_status, to_status)
