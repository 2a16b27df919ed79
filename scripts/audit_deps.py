"""The dependency half of `make audit`: pip-audit over the installed environment, and a loud fallback.

Why a script and not one pip-audit line: pip-audit's default service asks PyPI's JSON API about each
installed *version* (``/pypi/<name>/<version>/json``). Where only a package mirror is reachable, that
endpoint can answer 404 for every package, and pip-audit then skips them all and still prints "No known
vulnerabilities found" with exit status 0. So:

1. pip-audit runs with ``--strict`` (a dependency it could not audit fails the run) and
   ``--skip-editable`` (our own package is not on PyPI). Exit 0 means a full audit. Known
   vulnerabilities fail the run with pip-audit's own report.
2. Only when pip-audit failed because its service could not answer, the fallback runs, and says so on
   its first line. It asks the same JSON API for each *project* (``/pypi/<name>/json``), whose
   ``vulnerabilities`` list is PyPI's advisories for the newest release. A package installed at its
   newest release is audited that way; any advisory fails the run. A package installed at an older
   release cannot be audited by this route: the run fails unless ``[tool.tradedesk.audit]
   unaudited-ok`` in pyproject.toml names it with the reason it is held back.
3. Ignored advisories (``ignore-vulns``, ID = reason, each explained in docs/security.md) are passed
   to pip-audit as ``--ignore-vuln`` and honoured by the fallback too.

Exit status: 0 audited and clean; 1 vulnerabilities, or packages that could not be audited; 2 the
audit could not run at all (no pip-audit, no answer from the JSON API).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.metadata
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# What pip-audit prints when its service has no answer for a dependency (404, or no connection).
SERVICE_FAILURES = ("could not be audited", "ConnectionError", "Max retries exceeded", "ServiceError")


@dataclasses.dataclass(frozen=True)
class Policy:
    ignore_vulns: dict[str, str]  # advisory id -> why it is accepted
    unaudited_ok: dict[str, str]  # package name -> why the fallback may leave it unaudited


@dataclasses.dataclass
class Report:
    audited: list[str] = dataclasses.field(default_factory=list)
    findings: list[str] = dataclasses.field(default_factory=list)
    unaudited: list[str] = dataclasses.field(default_factory=list)  # not excused: fail
    excused: list[str] = dataclasses.field(default_factory=list)  # unaudited, with a reason on record

    @property
    def ok(self) -> bool:
        return not self.findings and not self.unaudited


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_policy(pyproject: Path = ROOT / "pyproject.toml") -> Policy:
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("tradedesk", {}).get("audit", {})
    return Policy(
        ignore_vulns=dict(table.get("ignore-vulns", {})),
        unaudited_ok={canonical(k): v for k, v in table.get("unaudited-ok", {}).items()},
    )


def installed() -> dict[str, str]:
    """Every installed distribution but editable ones (our own package), name -> version."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            continue
        found[canonical(dist.metadata["Name"])] = dist.version
    return dict(sorted(found.items()))


def default_json_api() -> str:
    # pip's own record of where PyPI's JSON API is, so this file names no host.
    from pip._internal.models.index import PyPI

    return str(PyPI.pypi_url)


def run_pip_audit(policy: Policy) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "pip_audit", "--strict", "--skip-editable", "--progress-spinner", "off"]
    for vuln_id in policy.ignore_vulns:
        command += ["--ignore-vuln", vuln_id]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def fetch_project(api: str, name: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api.rstrip('/')}/{name}/json", timeout=timeout) as answer:
        data: dict[str, Any] = json.load(answer)
        return data


def audit_from_project_pages(
    packages: dict[str, str], policy: Policy, api: str, timeout: float = 15.0
) -> Report:
    """The fallback: each package's newest-release advisories, for packages installed at that release."""
    report = Report()

    def one(item: tuple[str, str]) -> tuple[str, str, dict[str, Any] | Exception]:
        name, version = item
        try:
            return name, version, fetch_project(api, name, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return name, version, exc

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, packages.items()))
    for name, version, page in answers:
        if isinstance(page, Exception):
            problem = f"{name} {version}: no answer from the JSON API ({page})"
        else:
            newest = str(page.get("info", {}).get("version", ""))
            if newest == version:
                report.audited.append(f"{name} {version}")
                for vuln in page.get("vulnerabilities") or []:
                    ids = [vuln.get("id", "?"), *(vuln.get("aliases") or [])]
                    if vuln.get("withdrawn") or any(i in policy.ignore_vulns for i in ids):
                        continue
                    fixed = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
                    report.findings.append(f"{name} {version}: {' / '.join(ids)} (fixed in: {fixed})")
                continue
            problem = f"{name} {version}: the JSON API describes only the newest release, {newest}"
        if name in policy.unaudited_ok:
            report.excused.append(f"{problem} — accepted: {policy.unaudited_ok[name]}")
        else:
            report.unaudited.append(problem)
    return report


def print_report(report: Report, policy: Policy, packages: dict[str, str]) -> None:
    print(
        f"[audit] fallback audited {len(report.audited)} of {len(packages)} packages at their newest release"
    )
    for line in report.excused:
        print(f"[audit] NOT AUDITED (accepted in pyproject.toml): {line}")
    for line in report.unaudited:
        print(f"[audit] NOT AUDITED: {line}", file=sys.stderr)
    for line in report.findings:
        print(f"[audit] VULNERABLE: {line}", file=sys.stderr)
    excused = {line.split(" ", 1)[0] for line in report.excused}
    for name in sorted(set(policy.unaudited_ok) - excused):
        print(f"[audit] note: unaudited-ok lists {name}, which needs no excuse here")
    if report.unaudited:
        print(
            "[audit] a package the fallback cannot audit fails the run: upgrade it, or name it under "
            "[tool.tradedesk.audit] unaudited-ok in pyproject.toml with the reason",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # keep the order of stdout and stderr
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-fallback", action="store_true", help="fail when pip-audit cannot audit")
    parser.add_argument("--fallback-only", action="store_true", help="skip pip-audit, run the fallback")
    parser.add_argument("--json-api", default=None, help="base URL of the JSON API (default: pip's PyPI)")
    args = parser.parse_args(argv)
    policy = load_policy()

    if not args.fallback_only:
        code, out, err = run_pip_audit(policy)
        if code == 0:
            sys.stdout.write(out)
            print("[audit] pip-audit: full audit, no known vulnerabilities")
            return 0
        if "No module named pip_audit" in err:
            print("[audit] pip-audit is not installed (make install)", file=sys.stderr)
            return 2
        if not any(marker in err for marker in SERVICE_FAILURES):
            sys.stdout.write(out)
            sys.stderr.write(err)
            print("[audit] pip-audit found known vulnerabilities (or failed): see above", file=sys.stderr)
            return 1
        first = next((line for line in err.splitlines() if any(m in line for m in SERVICE_FAILURES)), err)
        print(f"[audit] pip-audit could not audit this environment: {first.strip()}", file=sys.stderr)
        if args.no_fallback:
            return 1
        print("[audit] FALLBACK: PyPI's per-project advisories (newest release only), not a full pip-audit")

    packages = installed()
    api = args.json_api or default_json_api()
    report = audit_from_project_pages(packages, policy, api)
    if not report.audited and not report.findings:
        print_report(report, policy, packages)
        print("[audit] the fallback could not audit anything", file=sys.stderr)
        return 2
    print_report(report, policy, packages)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
