"""Broker orders: placement in atomic phases under an Idempotency-Key, reads, cancel, reconciliation."""
