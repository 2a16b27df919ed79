"""The monitoring kit stays true to the app: the alert rules and Prometheus config pass promtool (their unit
tests included), every metric the rules and the dashboard query is one the app exports, every rule carries
what an on-call engineer needs, and the compose `monitoring` profile mounts what it should.

promtool comes with Prometheus (Debian: the `prometheus` package; `.ci/run` installs it). Without it these
tests skip locally and fail in CI (the CI variable is set), so the rules are never shipped untested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.metrics import scrape
from tests.support.routes import router as support_router

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tradedesk.json"
RUNBOOKS = {
    "payment-webhook-compromised.md",
    "rate-limit-attack.md",
    "database-pool-exhausted.md",
    "broker-outage.md",
    "discord-ban.md",
}
# Series Prometheus itself makes, not the app: the firing alerts and the scrape's health.
PROMETHEUS_SERIES = {"ALERTS", "up"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not on PATH; CI must run the alert-rule tests (.ci/run installs it)")
        pytest.skip("promtool not on PATH (Debian: apt-get install prometheus)")
    return path


def _run_promtool(*args: str) -> str:
    result = subprocess.run(
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_alert_rules() -> None:
    output = _run_promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_promtool_runs_the_alert_rule_unit_tests() -> None:
    output = _run_promtool("test", "rules", "deploy/prometheus/alerts.test.yml")
    assert "SUCCESS" in output and "FAILED" not in output


def test_promtool_checks_the_prometheus_config_and_its_rule_files() -> None:
    output = _run_promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert "1 rule files found" in output


# --------------------------------------------------------------------------------------------------
# The rules themselves
# --------------------------------------------------------------------------------------------------
def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_rule_has_for_severity_summary_description_and_a_known_runbook() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: `for:` missing"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        runbook = annotations["runbook_url"]
        assert runbook.startswith("docs/runbooks/") and runbook.removeprefix("docs/runbooks/") in RUNBOOKS, (
            name,
            runbook,
        )


def test_the_failure_analysis_thresholds_are_the_ones_alerted_on() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    expected = {
        "HighErrorRate": ("> 0.05", "5m"),
        "HighLatencyP95": ("> 5", "5m"),
        "PaymentWebhookErrors": ("> 0.001", "5m"),
        "BrokerApiFailureRate": ("> 0.10", "5m"),
        "DatabasePoolHighUsage": ("> 0.8", "5m"),
        "BrokerCircuitBreakerOpen": ("== 2", "3m"),
        "RateLimitOffender": ("increase(rate_limit_offenders_total", "1m"),
    }
    for name, (fragment, duration) in expected.items():
        assert fragment in rules[name]["expr"], (name, rules[name]["expr"])
        assert rules[name]["for"] == duration, name
    assert "histogram_quantile(0.95" in rules["HighLatencyP95"]["expr"]


def test_every_rule_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names <= fires, f"no firing case: {sorted(names - fires)}"
    assert names <= silent, f"no silent case: {sorted(names - silent)}"


# --------------------------------------------------------------------------------------------------
# Metric names: the rules and the dashboard query only what the app exports
# --------------------------------------------------------------------------------------------------
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function or aggregation, or an operator keyword
        names.add(match.group())
    return names


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket{route!="/x"}[5m])))'
        " > 5 and deriv(max(alerts_queue_depth)[15m:1m]) > 1/60 or up offset 1e3s unless on (instance) x_total"
    )
    assert metric_names(expr) == {
        "http_request_duration_seconds_bucket",
        "alerts_queue_depth",
        "up",
        "x_total",
    }


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_series_names(exposition: str) -> set[str]:
    """Every series name the exposition declares, whether or not it has samples yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_metric_in_the_rules_and_the_dashboard_is_exported_by_the_app(make_client) -> None:
    client = await make_client(routers=[support_router], rate_limit_default="2/minute")
    for _ in range(3):  # served, refused (429)
        await client.post("/v1/_test/items", json={"name": "a", "qty": 1})
    await client.get("/healthz")
    exported = exported_series_names(await scrape(client))
    assert "http_requests_total" in exported and "tool_calls_total" in exported

    used = {name: "alerts.yml" for rule in _rules() for name in metric_names(rule["expr"])}
    used.update({name: "tradedesk.json" for expr in _dashboard_exprs() for name in metric_names(expr)})
    assert len(used) > 30, sorted(used)  # the extraction found the queries
    missing = {name: where for name, where in used.items() if name not in exported | PROMETHEUS_SERIES}
    assert not missing, f"queried but not exported by the app: {missing}"


def test_the_dashboard_covers_each_area() -> None:
    used = {name for expr in _dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "webhook_events_total",
        "external_api_requests_total",
        "circuit_breaker_state",
        "db_pool_checked_out",
        "rate_limit_hits_total",
        "rate_limit_offenders_total",
        "alerts_queue_depth",
        "tool_calls_total",
        "backtest_jobs_total",
    ):
        assert name in used, name


def test_the_dashboard_and_its_provisioning_agree() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tradedesk.yml").read_text())
    [dashboards] = provider["providers"]
    grafana = _compose()["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{dashboards['options']['path']}:ro" in grafana["volumes"]


# --------------------------------------------------------------------------------------------------
# The compose profile
# --------------------------------------------------------------------------------------------------
def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_pinned_images() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis", "migrate", "app"):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        image, _, tag = service["image"].partition(":")
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin an exact version, not {tag!r}"
        for volume in service["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts a missing {source}"
            assert volume.endswith(":ro") or not source.startswith("./"), f"{name}: mount config read-only"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: publish on loopback only, not {port}"

    prometheus = services["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "tradedesk"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["app:8000"]


def test_the_grafana_admin_password_comes_from_the_environment_without_a_default() -> None:
    grafana = _compose()["services"]["grafana"]
    env = grafana["environment"]
    # Compose interpolates every service, profile or not: `${VAR:?}` would break a plain `up`, so the
    # container itself refuses to start without the password.
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD"' in " ".join(grafana["entrypoint"])
    assert grafana["entrypoint"][-1].rstrip().endswith("exec /run.sh")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    for key, value in env.items():  # no secret value in the repo: only an interpolation without default
        if "PASSWORD" in key or "SECRET" in key:
            assert re.fullmatch(r"\$\{[A-Z_]+:-\}", value), key
    assert "secureJsonData" not in (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()


async def test_metrics_are_reachable_unauthenticated_for_the_scraper(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
