"""`httpx.AsyncClient(` may be constructed only in app/core/http.py: every outbound call then gets the
timeouts, deadline, retries, breaker and metrics of the one outbound layer."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
ALLOWED = APP / "core" / "http.py"


def _client_constructions(path: Path) -> list[int]:
    """Line numbers of calls to httpx.AsyncClient / httpx.Client (by attribute or an imported name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {"AsyncClient", "Client"}
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "httpx":
            aliases.update(a.asname or a.name for a in node.names if a.name in names)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in names
            and isinstance(func.value, ast.Name)
            and func.value.id == "httpx"
        ):
            lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id in aliases:
            lines.append(node.lineno)
    return lines


def test_only_app_core_http_builds_httpx_clients() -> None:
    offenders = []
    for path in sorted(APP.rglob("*.py")):
        if path == ALLOWED:
            continue
        text = path.read_text()
        lines = _client_constructions(path)
        if "httpx.AsyncClient(" in text and not lines:
            lines = [text[: text.index("httpx.AsyncClient(")].count("\n") + 1]  # e.g. built via getattr/eval
        offenders += [f"{path.relative_to(APP.parent)}:{line}" for line in lines]
    assert not offenders, (
        "Build outbound clients with app.core.http.Outbound.create(...) instead of httpx directly: "
        + ", ".join(offenders)
    )


def test_the_check_itself_finds_constructions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import httpx\nfrom httpx import AsyncClient as C\nc = httpx.AsyncClient()\nd = C()\n")
    assert _client_constructions(sample) == [3, 4]
    assert ALLOWED.exists() and _client_constructions(ALLOWED)  # the one allowed place really builds one
