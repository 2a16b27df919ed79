"""The fallback of scripts/audit_deps.py decides whether CI passes when pip-audit cannot audit.

It runs against a loopback stand-in for PyPI's per-project JSON pages, so each decision is shown on
real HTTP answers: an advisory on the installed newest release fails, an ignored or withdrawn one does
not, a package installed below its newest release fails unless pyproject excuses it, and a package the
API cannot answer for is not audited either.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

PAGES = {
    "clean": {"info": {"version": "2.0"}, "vulnerabilities": []},
    "vulnerable": {
        "info": {"version": "1.5"},
        "vulnerabilities": [
            {"id": "PYSEC-0000-1", "aliases": ["CVE-0000-1"], "fixed_in": [], "withdrawn": None},
            {"id": "GHSA-old", "aliases": [], "fixed_in": ["1.4"], "withdrawn": "2020-01-01T00:00:00Z"},
        ],
    },
    "behind": {"info": {"version": "9.0"}, "vulnerabilities": []},
}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            _, name, _ = self.path.strip("/").split("/")  # /pypi/<name>/json
            page = PAGES.get(name)
            body = json.dumps(page).encode() if page else b'{"message": "Not Found"}'
            self.send_response(200 if page else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()
    server.server_close()


def test_an_advisory_on_the_installed_newest_release_fails(api: str) -> None:
    audit = load_script()
    report = audit.audit_from_project_pages(
        {"clean": "2.0", "vulnerable": "1.5"}, audit.Policy(ignore_vulns={}, unaudited_ok={}), api
    )
    assert sorted(report.audited) == ["clean 2.0", "vulnerable 1.5"]
    assert report.findings == ["vulnerable 1.5: PYSEC-0000-1 / CVE-0000-1 (fixed in: no fixed release)"]
    assert not report.ok


def test_an_ignored_advisory_by_any_of_its_ids_passes(api: str) -> None:
    audit = load_script()
    policy = audit.Policy(ignore_vulns={"CVE-0000-1": "reason"}, unaudited_ok={})
    report = audit.audit_from_project_pages({"vulnerable": "1.5"}, policy, api)
    assert report.findings == [] and report.ok


def test_a_package_below_its_newest_release_or_unknown_fails_unless_excused(api: str) -> None:
    audit = load_script()
    packages = {"behind": "1.0", "missing": "3.0"}
    strict = audit.audit_from_project_pages(packages, audit.Policy(ignore_vulns={}, unaudited_ok={}), api)
    assert not strict.ok and strict.audited == []
    assert strict.unaudited[0] == "behind 1.0: the JSON API describes only the newest release, 9.0"
    assert strict.unaudited[1].startswith("missing 3.0: no answer from the JSON API")
    excused = audit.audit_from_project_pages(
        packages,
        audit.Policy(ignore_vulns={}, unaudited_ok={"behind": "held back", "missing": "private"}),
        api,
    )
    assert excused.ok and len(excused.excused) == 2


def test_the_policy_in_pyproject_gives_a_reason_for_every_entry() -> None:
    policy = load_script().load_policy()
    for table in (policy.ignore_vulns, policy.unaudited_ok):
        assert all(isinstance(reason, str) and reason.strip() for reason in table.values())
