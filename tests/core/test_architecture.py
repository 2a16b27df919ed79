"""The house rules of ARCHITECTURE.md, checked on the source so a new feature cannot quietly break them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
FEATURES = sorted(
    p.name
    for p in APP.iterdir()
    if p.is_dir() and p.name not in {"core", "quant", "providers", "workers", "__pycache__"}
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((APP / folder).rglob("*.py")) if folder else sorted(APP.rglob("*.py"))


def test_there_are_features_to_check() -> None:
    assert {"auth", "billing", "brokers", "market"} <= set(FEATURES)


@pytest.mark.parametrize("path", sorted(APP.rglob("router.py")), ids=lambda p: str(p.relative_to(APP)))
def test_no_router_reads_app_state(path: Path) -> None:
    assert "app.state" not in path.read_text(), "reach shared objects through an Annotated dependency"


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_core_imports_no_feature_and_no_provider(path: Path) -> None:
    bad = {name for name in _imports(path) if name.startswith("app.") and not name.startswith("app.core")}
    assert not bad, f"app/core must know no feature or provider: {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("quant"), ids=lambda p: p.name)
def test_quant_imports_neither_the_web_nor_the_database(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in {"fastapi", "starlette", "sqlalchemy", "asyncpg", "httpx"}
        or (name.startswith("app.") and not name.startswith("app.quant"))
    }
    assert not bad, sorted(bad)


@pytest.mark.parametrize("path", sorted(APP.rglob("schemas.py")), ids=lambda p: str(p.relative_to(APP)))
def test_schemas_import_no_service(path: Path) -> None:
    assert not {name for name in _imports(path) if name.endswith(".service")}


@pytest.mark.parametrize(
    "path", [p for p in _modules("") if p != APP / "core" / "db.py"], ids=lambda p: str(p.relative_to(APP))
)
def test_only_core_db_opens_sessions_transactions_or_autocommit(path: Path) -> None:
    """One transaction idiom: the session dependency, or Database.own_transaction — nothing ad hoc."""
    text = path.read_text()
    for forbidden in ("sessionmaker(", ".begin()", "AUTOCOMMIT", ".commit()"):
        assert forbidden not in text, (
            f"{forbidden!r}: use SessionDep or Database.own_transaction (app/core/db.py)"
        )
