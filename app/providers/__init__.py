"""External systems, each behind a small interface, with a live and a local implementation."""
