"""Prometheus samples read the way an operator reads them: from the app's ``/metrics`` exposition.

The counters are process-wide (every test, every app instance in the process adds to them), so a test
asserts on how much a series grew while it ran — ``sample(after, ...) - sample(before, ...)`` — never
on the series merely being present, which an earlier test may have caused.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` (e.g. ``rate_limit_hits_total``) with exactly these labels in a
    ``/metrics`` text; 0.0 when absent (a labelled counter only appears once it was first touched)."""
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def grew(before: str, after: str, name: str, **labels: str) -> float:
    """How much one series grew between two scrapes."""
    return sample(after, name, **labels) - sample(before, name, **labels)
