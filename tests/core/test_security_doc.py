"""docs/security.md must not rot: its failure-mode table is checked against the code and the tests.

The table promises, for each of the analysis's fifteen failure modes, the modules that fix it, the
settings that tune it and the tests that reproduce it. A renamed test, a moved module, a dropped setting
or a forgotten failure mode would silently turn that promise false; this test reads the table and
fails on each of those, and on a ``python -m app.cli`` command the page names that does not exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app.cli import COMMANDS
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"

# The failure-mode analysis's own numbering and names.
FAILURE_MODES = {
    1: "Payment Webhook Security",
    2: "CORS Wildcard",
    3: "XSS Vulnerability",
    4: "No Rate Limiting",
    5: "Tool Parameter Injection",
    6: "Circuit Breaker Missing",
    7: "Database Transactions Missing",
    8: "Timeout Handling",
    9: "Environment Variable Validation",
    10: "Connection Pool Exhaustion",
    11: "Backtester Memory Issues",
    12: "Options Greeks Edge Cases",
    13: "Market Data Caching",
    14: "Discord Alert Rate Limiting",
    15: "Idempotency Key Validation",
}
COLUMNS = ["#", "failure mode", "fixed in", "settings", "proven by"]
CODE = re.compile(r"`([^`]+)`")


def table_rows(text: str) -> list[list[str]]:
    """The cells of the table whose header is ``COLUMNS``, one list per body row."""
    lines = text.splitlines()
    headers = [
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and [c.strip() for c in line.strip("|").split("|")] == COLUMNS
    ]
    assert headers, f"no table with the columns {COLUMNS} in {DOC.name}"
    start = headers[0]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def collected_tests(path: Path) -> set[str]:
    """Names of the test functions pytest would collect from a file: module level and in Test classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test")
            }
    return names


def check_table(text: str, root: Path = ROOT) -> list[str]:
    """Every problem with the table, as readable lines (empty when the table holds)."""
    problems: list[str] = []
    rows = table_rows(text)
    settings = {name.upper() for name in Settings.model_fields}
    seen: dict[int, str] = {}
    for row in rows:
        if len(row) != len(COLUMNS):
            problems.append(f"row {row[:2]} has {len(row)} cells, not {len(COLUMNS)}")
            continue
        number, name, fixed_in, knobs, proofs = row
        if not number.isdigit() or int(number) not in FAILURE_MODES:
            problems.append(f"row {number!r}: not a failure mode of the analysis (1–15)")
            continue
        if int(number) in seen:
            problems.append(f"failure mode {number} has two rows")
        seen[int(number)] = name
        if name != FAILURE_MODES[int(number)]:
            problems.append(
                f"failure mode {number} is {FAILURE_MODES[int(number)]!r} in the analysis, not {name!r}"
            )
        modules = CODE.findall(fixed_in)
        if not modules:
            problems.append(f"failure mode {number}: no module named in 'fixed in'")
        for module in modules:
            if not module.startswith("app/") or not (root / module).is_file():
                problems.append(f"failure mode {number}: module {module} does not exist")
        for knob in CODE.findall(knobs):
            if knob not in settings:
                problems.append(f"failure mode {number}: {knob} is not a setting")
        tests = CODE.findall(proofs)
        if not tests:
            problems.append(f"failure mode {number}: no test in 'proven by'")
        for ref in tests:
            file, sep, function = ref.partition("::")
            path = root / file
            if not sep or not file.startswith("tests/") or not path.is_file():
                problems.append(f"failure mode {number}: {ref} is not an existing tests/ file::test")
            elif function not in collected_tests(path):
                problems.append(f"failure mode {number}: {file} has no test {function}")
    for number in sorted(set(FAILURE_MODES) - set(seen)):
        problems.append(f"failure mode {number} ({FAILURE_MODES[number]}) is missing")
    return problems


def test_the_table_covers_all_fifteen_and_every_reference_exists() -> None:
    assert check_table(DOC.read_text()) == []


def test_every_cli_command_the_page_names_exists() -> None:
    named = set(re.findall(r"python -m app\.cli ([a-z][a-z-]*)", DOC.read_text()))
    assert named, "the page names no rotation command"
    assert named <= set(COMMANDS), f"not commands of app.cli: {sorted(named - set(COMMANDS))}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda t: t.replace("test_fifty_concurrent_deliveries_make_exactly_one_payment", "test_renamed"),
            "tests/billing/test_webhooks.py has no test test_renamed",
        ),
        (
            lambda t: t.replace("`app/core/breaker.py`", "`app/core/breakers.py`"),
            "module app/core/breakers.py does not exist",
        ),
        (
            lambda t: t.replace("`BREAKER_FAIL_MAX`", "`BREAKER_MAX_FAILS`"),
            "BREAKER_MAX_FAILS is not a setting",
        ),
        (
            lambda t: t.replace("| 3 | XSS Vulnerability |", "| 3 | Cross-site scripting |"),
            "failure mode 3 is 'XSS Vulnerability' in the analysis",
        ),
        (
            lambda t: re.sub(r"^\| 12 \|.*\n", "", t, flags=re.M),
            "failure mode 12 (Options Greeks Edge Cases) is missing",
        ),
        (
            lambda t: t.replace(
                "`tests/quant/test_greeks.py::test_values_tend_to_the_expiry_values`",
                "`tests/quant/test_greek.py::test_values_tend_to_the_expiry_values`",
            ),
            "tests/quant/test_greek.py::test_values_tend_to_the_expiry_values is not an existing tests/ file::test",
        ),
    ],
    ids=["renamed-test", "moved-module", "unknown-setting", "renamed-mode", "dropped-row", "missing-file"],
)
def test_the_check_catches_a_rotted_table(change, expected) -> None:  # type: ignore[no-untyped-def]
    problems = check_table(change(DOC.read_text()))
    assert any(expected in p for p in problems), problems
