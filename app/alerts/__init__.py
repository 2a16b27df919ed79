"""Discord alerts: a user's webhook (token encrypted), a durable queue of alerts in PostgreSQL, dedup."""
