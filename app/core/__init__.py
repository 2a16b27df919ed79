"""Cross-cutting machinery: each failure-mode fix lives here exactly once."""
