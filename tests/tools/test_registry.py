"""The tool registry: strict-mode schemas, hostile arguments, and the sandbox functions' results.

No database, no app: the registry, its models and the pure functions, plus the market-data tools'
prepare steps against the synthetic provider behind an in-memory cache.

The keyword allow-list below is derived from the providers' documentation of strict mode:
OpenAI Structured Outputs "Supported schemas"
(https://platform.openai.com/docs/guides/structured-outputs#supported-schemas) and Anthropic's
"JSON Schema limitations" for strict tool use
(https://platform.claude.com/docs/en/build-with-claude/structured-outputs#json-schema-limitations).
Only keywords both accept for every model are allowed; numeric, length, pattern and item-count
constraints are unsupported by Anthropic (and by older OpenAI models), so the server enforces them.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import itertools
import json
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import NotFound, Unprocessable
from app.providers.market_data import MarketData
from app.providers.market_data.cache import MarketDataCache
from app.providers.market_data.synthetic import SyntheticProvider
from app.quant.backtest import run_backtest
from app.quant.greeks import GREEKS, bs_greeks
from app.quant.greeks import implied_vol as quant_implied_vol
from app.tools import functions, registry
from app.tools.functions import ToolArgumentError
from app.tools.registry import (
    REGISTRY,
    Prepared,
    Tool,
    ToolContext,
    argument_error,
    call_inline,
    check_strict_schema,
    get_tool,
    prepare,
    published_schema,
    published_tools,
    register,
    resolve_function,
    validate_arguments,
)
from app.tools.schemas import BacktestArgs, GreeksArgs, QuoteArgs, ToolArgs

# What both providers accept in strict mode (see the module docstring).
ALLOWED_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "description",
}
JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's and Anthropic's rule for tool names

OPTION: dict[str, Any] = {
    "option_type": "call",
    "spot": 100.0,
    "strike": 105.0,
    "t_years": 0.5,
    "rate": 0.03,
    "dividend_yield": 0.01,
    "sigma": 0.25,
}
IV_ARGS: dict[str, Any] = {
    "option_type": "put",
    "price": 7.5,
    "spot": 100.0,
    "strike": 105.0,
    "t_years": 0.5,
    "rate": 0.03,
    "dividend_yield": 0.01,
}
BACKTEST: dict[str, Any] = {
    "symbol": "AAPL",
    "timeframe": "1Hour",
    "start": "2024-01-02T00:00:00Z",
    "end": "2024-02-01T00:00:00Z",
    "fast": 5,
    "slow": 20,
    "commission": 0.001,
    "initial_cash": 10_000,
}
QUOTE: dict[str, Any] = {"symbol": "MSFT"}
VALID: dict[str, dict[str, Any]] = {
    "greeks": OPTION,
    "implied_vol": IV_ARGS,
    "backtest": BACKTEST,
    "quote": QUOTE,
}
BUILTIN = ("greeks", "implied_vol", "backtest", "quote")

INJECTIONS = [
    "../../etc/passwd",
    "; rm -rf /",
    "' OR 1=1 --",
    "__import__('os')",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "AAPL\x00",
    "AAPL; DROP TABLE users",
    "x" * (10 * 1024 * 1024),  # 10 MB
]


def errors(name: str, raw: object) -> list[dict[str, str]]:
    with pytest.raises(Unprocessable) as info:
        validate_arguments(name, raw)
    exc = info.value
    assert exc.status == 422
    assert exc.errors, "a 422 lists its errors"
    for error in exc.errors:
        assert error["field"] == "arguments" or error["field"].startswith("arguments.")
        assert isinstance(error["message"], str) and error["message"]
        assert len(error["field"]) < 400 and len(error["message"]) < 400, "nothing hostile is echoed back"
    return exc.errors


def error_fields(name: str, raw: object) -> list[str]:
    return [e["field"] for e in errors(name, raw)]


# --------------------------------------------------------------------------------------------------
# published schemas: mechanically strict


def walk(node: Mapping[str, Any], path: str = "parameters") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}.items")
    for i, variant in enumerate(node.get("anyOf", ())):
        yield from walk(variant, f"{path}.anyOf.{i}")


def nullable(node: Mapping[str, Any]) -> bool:
    return node.get("type") == "null" or any(v.get("type") == "null" for v in node.get("anyOf", ()))


def conforms(value: Any, schema: Mapping[str, Any]) -> bool:
    """A validator for the allow-listed subset (what a strict-mode model is constrained to emit)."""
    if "anyOf" in schema:
        return any(conforms(value, variant) for variant in schema["anyOf"])
    kind = schema["type"]
    if kind == "null":
        ok = value is None
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "array":
        ok = isinstance(value, list) and all(conforms(v, schema["items"]) for v in value)
    else:
        ok = (
            isinstance(value, dict)
            and set(value) == set(schema["required"])
            and all(conforms(value[k], schema["properties"][k]) for k in value)
        )
    return ok and ("enum" not in schema or value in schema["enum"])


def strict_form(raw: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` as a strict-mode model sends it: every property present, null for "not given"."""
    out = {}
    for name, sub in schema["properties"].items():
        value = raw.get(name)
        if isinstance(value, list) and "anyOf" in sub:
            items = next(v for v in sub["anyOf"] if v.get("type") == "array")["items"]
            value = [strict_form(v, items) for v in value]
        out[name] = value
    return out


def test_exactly_the_contract_tools_are_registered_and_named_for_both_providers() -> None:
    assert tuple(REGISTRY) == BUILTIN
    for tool in published_tools():
        assert set(tool) == {"name", "description", "parameters"}
        assert TOOL_NAME.fullmatch(tool["name"])
        assert isinstance(tool["description"], str) and 20 < len(tool["description"]) < 1024


@pytest.mark.parametrize("name", BUILTIN)
def test_published_schema_is_strict_mode_compatible(name: str) -> None:
    schema = published_schema(REGISTRY[name])
    assert schema["type"] == "object" and "anyOf" not in schema, "the root is a plain object"
    properties = 0
    for path, node in walk(schema):
        assert set(node) <= ALLOWED_KEYWORDS, f"{path}: {sorted(set(node) - ALLOWED_KEYWORDS)}"
        assert ("type" in node) != ("anyOf" in node), f"{path}: a type or a union, not both"
        if "type" in node:
            assert node["type"] in JSON_TYPES, path
        if "anyOf" in node:  # unions only ever mean "X or null"
            assert len(node["anyOf"]) == 2 and sum(v.get("type") == "null" for v in node["anyOf"]) == 1, path
        if node.get("type") == "object":
            assert node["additionalProperties"] is False, path
            assert node["required"] == list(node["properties"]), f"{path}: every property is required"
            properties += len(node["properties"])
        else:
            assert not {"properties", "required", "additionalProperties"} & set(node), path
        if node.get("type") == "array":
            assert "items" in node, path
        assert "$ref" not in json.dumps(node) and "$defs" not in json.dumps(node)
    assert path.count(".") <= 12 and properties <= 100
    check_strict_schema(schema)


@pytest.mark.parametrize("name", BUILTIN)
def test_optional_arguments_are_nullable_and_required_ones_are_not(name: str) -> None:
    tool = REGISTRY[name]
    schema = published_schema(tool)
    assert list(schema["properties"]) == list(tool.args_model.model_fields)
    for field_name, info in tool.args_model.model_fields.items():
        assert nullable(schema["properties"][field_name]) == (not info.is_required()), field_name
        # the server takes null for exactly the nullable ones
        if info.is_required():
            assert error_fields(name, {**VALID[name], field_name: None}) == [f"arguments.{field_name}"]
        else:
            base = {k: v for k, v in VALID[name].items() if tool.args_model.model_fields[k].is_required()}
            if name == "greeks":
                base = {"options": [OPTION]} if field_name != "options" else OPTION
            validate_arguments(name, {**base, field_name: None})


@pytest.mark.parametrize("name", BUILTIN)
def test_server_bounds_are_written_into_the_descriptions(name: str) -> None:
    text = json.dumps(published_schema(REGISTRY[name]))
    expected = {
        "greeks": [">= 1e-06, <= 1000000000", ">= -1, <= 1", ">= 0.0001, <= 10.", "at most 10000 items"],
        "implied_vol": [">= 0, <= 1000000000", ">= 1e-06, <= 100."],
        "backtest": [
            ">= 1, <= 9999",
            "matching ^[A-Za-z][A-Za-z0-9.]{0,9}$",
            ">= 0, < 1",
            "at most 64 characters",
        ],
        "quote": ["at most 10 characters"],
    }[name]
    for fragment in expected:
        assert fragment in text


def test_the_checker_refuses_what_strict_mode_refuses() -> None:
    good = published_schema(REGISTRY["greeks"])
    check_strict_schema(good)
    mutations = []
    for mutate in (
        lambda s: s["properties"]["spot"].__setitem__("minimum", 0),
        lambda s: s["required"].pop(),
        lambda s: s.__setitem__("additionalProperties", True),
        lambda s: s["properties"]["options"]["anyOf"][0]["items"].pop("additionalProperties"),
        lambda s: s["properties"]["spot"].__setitem__("default", None),
        lambda s: s.__setitem__("$defs", {}),
        lambda s: s["properties"]["spot"].__setitem__("anyOf", [{"type": "number"}, {"type": "string"}]),
        lambda s: s["properties"]["option_type"]["anyOf"][0].__setitem__("format", "date-time"),
        lambda s: s["properties"]["spot"].__setitem__("oneOf", []),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        mutations.append(bad)
    for bad in mutations:
        with pytest.raises(ValueError):
            check_strict_schema(bad)


@pytest.mark.parametrize("name", BUILTIN)
def test_valid_arguments_in_strict_form_conform_to_the_schema_and_pass(name: str) -> None:
    schema = published_schema(REGISTRY[name])
    sent = strict_form(VALID[name], schema)
    assert conforms(sent, schema)
    validate_arguments(name, sent)
    validate_arguments(name, VALID[name])


def test_published_schemas_are_fresh_copies() -> None:
    first = published_schema(REGISTRY["quote"])
    first["properties"].clear()
    assert published_schema(REGISTRY["quote"])["properties"]


# --------------------------------------------------------------------------------------------------
# valid arguments


def test_greeks_single_and_batch_forms() -> None:
    single = validate_arguments("greeks", OPTION)
    assert isinstance(single, GreeksArgs) and not single.is_batch and single.spot == 100.0
    batch = validate_arguments("greeks", {"options": [OPTION] * 3})
    assert isinstance(batch, GreeksArgs) and batch.is_batch and len(batch.options or []) == 3
    llm = strict_form({"options": [OPTION]}, published_schema(REGISTRY["greeks"]))
    assert llm["spot"] is None and validate_arguments("greeks", llm) == validate_arguments(
        "greeks", {"options": [OPTION]}
    )
    # JSON integers are numbers
    ints = validate_arguments("greeks", {**OPTION, "spot": 100, "strike": 100, "t_years": 1, "rate": 0})
    assert isinstance(ints, GreeksArgs) and ints.spot == 100.0
    validate_arguments("greeks", {"options": [OPTION] * 10_000})


def test_backtest_defaults_and_normalisation() -> None:
    args = validate_arguments(
        "backtest", {"symbol": "brk.b", "start": "2024-01-02", "end": "2024-01-03T10:00:00+02:00"}
    )
    assert isinstance(args, BacktestArgs)
    assert args.symbol == "BRK.B"
    assert (args.timeframe, args.fast, args.slow, args.commission, args.initial_cash) == (
        "1Day",
        20,
        50,
        0.0,
        100_000.0,
    )
    assert args.start == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert args.end == dt.datetime(2024, 1, 3, 8, tzinfo=dt.UTC)
    nulls = {
        **BACKTEST,
        "timeframe": None,
        "fast": None,
        "slow": None,
        "commission": None,
        "initial_cash": None,
    }
    assert validate_arguments("backtest", nulls) == validate_arguments(
        "backtest", {k: BACKTEST[k] for k in ("symbol", "start", "end")}
    )
    quote = validate_arguments("quote", {"symbol": "aapl"})
    assert isinstance(quote, QuoteArgs) and quote.symbol == "AAPL"


# --------------------------------------------------------------------------------------------------
# hostile arguments


STRING_FIELDS = [
    ("greeks", "option_type"),
    ("implied_vol", "option_type"),
    ("backtest", "symbol"),
    ("backtest", "timeframe"),
    ("backtest", "start"),
    ("backtest", "end"),
    ("quote", "symbol"),
]
NUMBER_FIELDS = (
    [("greeks", f) for f in OPTION if f != "option_type"]
    + [("implied_vol", f) for f in IV_ARGS if f != "option_type"]
    + [("backtest", f) for f in ("fast", "slow", "commission", "initial_cash")]
)


@pytest.mark.parametrize("injection", INJECTIONS, ids=lambda s: repr(s[:20]))
@pytest.mark.parametrize(("name", "field"), STRING_FIELDS + NUMBER_FIELDS)
def test_injection_strings_are_refused_naming_the_field(name: str, field: str, injection: str) -> None:
    assert error_fields(name, {**VALID[name], field: injection}) == [f"arguments.{field}"]


@pytest.mark.parametrize("injection", INJECTIONS, ids=lambda s: repr(s[:20]))
def test_injection_strings_inside_a_batch_name_the_item(injection: str) -> None:
    options = [OPTION] * 5
    options[3] = {**OPTION, "option_type": injection}
    assert error_fields("greeks", {"options": options}) == ["arguments.options.3.option_type"]


@pytest.mark.parametrize("injection", INJECTIONS[:6], ids=lambda s: repr(s[:20]))
def test_injection_strings_as_keys_or_tool_names(injection: str) -> None:
    fields = error_fields("quote", {"symbol": "AAPL", injection: 1})
    assert fields == [f"arguments.{injection}"]
    with pytest.raises(NotFound):
        validate_arguments(injection, {})


def test_a_10_mb_key_is_not_echoed() -> None:
    (error,) = errors("quote", {"symbol": "AAPL", "k" * 10_000_000: 1})
    assert error["field"].startswith("arguments.kkk") and len(error["field"]) < 100
    assert error["message"] == "unknown argument"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"])
@pytest.mark.parametrize(("name", "field"), NUMBER_FIELDS)
def test_non_finite_numbers_from_raw_json_are_refused(name: str, field: str, text: str) -> None:
    raw = json.loads(json.dumps({**VALID[name], field: 0}).replace(f'"{field}": 0', f'"{field}": {text}'))
    assert not math.isfinite(raw[field])  # what Python's json makes of the raw text
    assert error_fields(name, raw) == [f"arguments.{field}"]


def test_non_finite_numbers_inside_a_batch() -> None:
    raw = json.loads(json.dumps({"options": [OPTION] * 4}).replace('"sigma": 0.25}]', '"sigma": 1e309}]'))
    assert error_fields("greeks", raw) == ["arguments.options.3.sigma"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sigma", -0.2),
        ("sigma", 0),
        ("sigma", 5e-5),
        ("strike", 5e-324),
        ("t_years", 1e-7),
        ("sigma", 10.5),
        ("spot", -1),
        ("spot", 0),
        ("spot", 2e9),
        ("strike", -100),
        ("t_years", 0),
        ("t_years", -1),
        ("t_years", 101),
        ("rate", 1.5),
        ("dividend_yield", -2),
        ("option_type", "CALL"),
        ("option_type", "straddle"),
    ],
)
def test_out_of_range_values_are_refused_single_and_batch(field: str, value: Any) -> None:
    assert error_fields("greeks", {**OPTION, field: value}) == [f"arguments.{field}"]
    options = [OPTION] * 5
    options[3] = {**OPTION, field: value}
    assert error_fields("greeks", {"options": options}) == [f"arguments.options.3.{field}"]


def test_negative_volatility_in_implied_vol_price_and_backtest_bounds() -> None:
    assert error_fields("implied_vol", {**IV_ARGS, "price": -1}) == ["arguments.price"]
    assert error_fields("backtest", {**BACKTEST, "commission": 1}) == ["arguments.commission"]
    assert error_fields("backtest", {**BACKTEST, "commission": -0.1}) == ["arguments.commission"]
    assert error_fields("backtest", {**BACKTEST, "initial_cash": 0}) == ["arguments.initial_cash"]
    assert error_fields("backtest", {**BACKTEST, "fast": 0}) == ["arguments.fast"]
    assert error_fields("backtest", {**BACKTEST, "slow": 10_001}) == ["arguments.slow"]


def test_batch_length_is_capped() -> None:
    (error,) = errors("greeks", {"options": [OPTION] * 10_001})
    assert error["field"] == "arguments.options" and "10000" in error["message"]
    assert error_fields("greeks", {"options": []}) == ["arguments.options"]


def test_many_errors_are_capped_and_counted() -> None:
    with pytest.raises(Unprocessable) as info:
        validate_arguments("greeks", {"options": [{**OPTION, "sigma": -1, "spot": -1}] * 1000})
    assert len(info.value.errors or []) == registry.MAX_REPORTED_ERRORS
    assert "(and 1995 more)" in info.value.detail
    assert info.value.errors and info.value.errors[0]["field"] == "arguments.options.0.spot"


@pytest.mark.parametrize(
    ("name", "raw", "fields"),
    [
        ("greeks", {**OPTION, "volatility": 0.2}, ["arguments.volatility"]),
        ("greeks", {"options": [{**OPTION, "extra": 1}]}, ["arguments.options.0.extra"]),
        (
            "quote",
            {"symbol": "AAPL", "path": "/etc/passwd", "url": "http://x"},
            ["arguments.path", "arguments.url"],
        ),
        ("backtest", {**BACKTEST, "sql": "1; DROP TABLE x"}, ["arguments.sql"]),
        ("implied_vol", {**IV_ARGS, "__class__": {}}, ["arguments.__class__"]),
    ],
)
def test_unknown_keys_are_named(name: str, raw: dict[str, Any], fields: list[str]) -> None:
    found = errors(name, raw)
    assert [e["field"] for e in found] == fields
    assert all(e["message"] == "unknown argument" for e in found)


@pytest.mark.parametrize("value", ["100", "1e2", " 100", True, False, [100], {"v": 100}, None])
def test_no_coercion_for_numbers(value: Any) -> None:
    assert error_fields("greeks", {**OPTION, "spot": value}) == ["arguments.spot"]
    assert error_fields("implied_vol", {**IV_ARGS, "price": value}) == ["arguments.price"]


@pytest.mark.parametrize("value", [20.0, "20", True, 20.5])
def test_no_coercion_for_integers(value: Any) -> None:
    assert error_fields("backtest", {**BACKTEST, "fast": value, "slow": 50}) == ["arguments.fast"]


@pytest.mark.parametrize(
    "value", [1, 1.5, True, ["AAPL"], {"s": "AAPL"}, "", "1AAPL", "AAPL.COM.XYZ", "ÄPPL"]
)
def test_symbols(value: Any) -> None:
    assert error_fields("quote", {"symbol": value}) == ["arguments.symbol"]


@pytest.mark.parametrize("value", [["x"], "x", 3, None, True])
def test_arguments_must_be_an_object(value: Any) -> None:
    assert errors("greeks", value) == [{"field": "arguments", "message": "must be a JSON object"}]


def test_batch_items_must_be_objects() -> None:
    (error,) = errors("greeks", {"options": [OPTION, "x"]})
    assert error == {"field": "arguments.options.1", "message": "must be a JSON object"}


def test_cross_field_rules_name_the_field() -> None:
    assert error_fields("backtest", {**BACKTEST, "fast": 50, "slow": 50}) == ["arguments.slow"]
    assert error_fields("backtest", {**BACKTEST, "fast": 60, "slow": None}) == ["arguments.slow"]
    late = {**BACKTEST, "start": "2024-02-02T00:00:00Z"}
    assert error_fields("backtest", late) == ["arguments.end"]
    assert error_fields("greeks", {}) == ["arguments.options"]
    assert error_fields("greeks", {"spot": 100, "sigma": 0.2}) == [
        "arguments.option_type",
        "arguments.strike",
        "arguments.t_years",
        "arguments.rate",
        "arguments.dividend_yield",
    ]
    assert error_fields("greeks", {**OPTION, "options": [OPTION]}) == [f"arguments.{f}" for f in OPTION]
    assert error_fields("greeks", {"spot": 100, "options": [OPTION]}) == ["arguments.spot"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("start", "1969-12-31T23:59:59Z"),
        ("start", "yesterday"),
        ("start", 1704153600),
        ("start", ""),
        ("start", "2024-01-02T00:00:00Z" + " " * 60),
        ("start", "0001-01-01T00:00:00+01:00"),
        ("end", "9999-12-31T23:59:59Z"),
        ("end", "three days from now"),  # computed in the test: a stable id for pytest-xdist
        ("end", None),
    ],
)
def test_instants(field: str, value: Any) -> None:
    if value == "three days from now":
        value = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
    assert error_fields("backtest", {**BACKTEST, field: value}) == [f"arguments.{field}"]


@pytest.mark.parametrize(
    "name", ["Greeks", "greeks ", " greeks", "greeks\x00", "GREEKS", "greek", "", "os.system"]
)
def test_tool_names_match_exactly(name: str) -> None:
    with pytest.raises(NotFound) as info:
        validate_arguments(name, OPTION)
    assert info.value.status == 404


@pytest.mark.parametrize("name", [None, 1, ["greeks"], {"name": "greeks"}])
def test_non_string_tool_names(name: Any) -> None:
    with pytest.raises(NotFound):
        get_tool(name)


def test_unknown_tool_names_are_not_echoed_whole() -> None:
    with pytest.raises(NotFound) as info:
        get_tool("x" * 1_000_000)
    assert len(info.value.detail) < 300


# --------------------------------------------------------------------------------------------------
# only the registry can be called


@pytest.mark.parametrize(
    "ref",
    [
        "os:system",
        "builtins:eval",
        "subprocess:run",
        "app.tools.functions:_finite",
        "app.tools.functions:np",
        "app.quant.backtest:run_backtest",
        "app.tools.functions:greeks ",
        "",
    ],
)
def test_resolve_function_refuses_anything_unregistered(ref: str) -> None:
    with pytest.raises(LookupError):
        resolve_function(ref)


def test_registered_functions_resolve() -> None:
    assert resolve_function("app.tools.functions:greeks") is functions.greeks
    assert set(functions.FUNCTIONS) == {t.function for t in REGISTRY.values() if t.function}
    for ref, function in functions.FUNCTIONS.items():
        assert resolve_function(ref) is function


def test_register_checks_names_and_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", dict(REGISTRY))
    tool = Tool(
        name="echo_test", description="test", args_model=QuoteArgs, function="app.tools.functions:greeks"
    )
    register(tool)
    assert registry.get_tool("echo_test") is tool
    with pytest.raises(ValueError):
        register(tool)
    for bad in ("Echo", "echo-test", "1echo", "echo test", "e" * 65, ""):
        with pytest.raises(ValueError):
            register(Tool(name=bad, description="x", args_model=QuoteArgs, function=None, prepare=None))


# --------------------------------------------------------------------------------------------------
# the functions equal app.quant


async def run(name: str, raw: Any, ctx: ToolContext | None = None) -> dict[str, Any]:
    tool = get_tool(name)
    prepared = await prepare(tool, validate_arguments(name, raw), ctx or ToolContext())
    payload = pickle.loads(pickle.dumps(prepared.payload))  # what crosses the pipe to a worker
    result = call_inline(Prepared(prepared.function, payload))
    json.dumps(result, allow_nan=False)  # JSON-ready, finite
    return result


async def test_greeks_single_equals_bs_greeks() -> None:
    result = await run("greeks", OPTION)
    assert result == bs_greeks(*OPTION.values())
    assert list(result) == list(GREEKS)


async def test_greeks_batch_equals_bs_greeks() -> None:
    rng = np.random.default_rng(7)
    options = [
        {
            "option_type": str(rng.choice(["call", "put"])),
            "spot": float(rng.uniform(1, 500)),
            "strike": float(rng.uniform(1, 500)),
            "t_years": float(rng.uniform(0.001, 5)),
            "rate": float(rng.uniform(-0.05, 0.1)),
            "dividend_yield": float(rng.uniform(0, 0.05)),
            "sigma": float(rng.uniform(0.01, 2)),
        }
        for _ in range(2_000)
    ]
    result = await run("greeks", {"options": options})
    assert len(result["results"]) == len(options)
    for option, row in zip(options, result["results"], strict=True):
        expected = bs_greeks(*option.values())
        for key in GREEKS:
            assert row[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12)


async def test_implied_vol_round_trips_a_price() -> None:
    for kind, sigma in (("call", 0.25), ("put", 0.8), ("call", 0.05)):
        option = {**OPTION, "option_type": kind, "sigma": sigma}
        price = bs_greeks(*option.values())["price"]
        args = {k: v for k, v in option.items() if k != "sigma"} | {"price": price}
        result = await run("implied_vol", args)
        assert result["sigma"] == pytest.approx(sigma, rel=1e-9)
        assert result["sigma"] == quant_implied_vol(*(args[k] for k in IV_ARGS))


async def test_implied_vol_outside_the_no_arbitrage_bounds_is_a_422_on_price() -> None:
    with pytest.raises(ToolArgumentError) as info:
        await run("implied_vol", {**IV_ARGS, "option_type": "call", "price": 150.0})
    exc = pickle.loads(pickle.dumps(info.value))  # crosses the worker pipe intact
    assert (exc.field, type(exc)) == ("price", ToolArgumentError)
    problem = argument_error(exc)
    assert problem.status == 422 and problem.errors and problem.errors[0]["field"] == "arguments.price"
    assert "no-arbitrage" in problem.errors[0]["message"]


def bars_csv(path: Path, opens: list[float], closes: list[float]) -> Path:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        for i, (o, c) in enumerate(zip(opens, closes, strict=True)):
            t = (start + dt.timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
            writer.writerow([t, repr(o), repr(max(o, c)), repr(min(o, c)), repr(c), "100"])
    return path


@pytest.mark.parametrize("chunk", [100_000, 7])
def test_backtest_bars_equals_run_backtest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(functions, "BACKTEST_CHUNK_BARS", chunk)
    rng = np.random.default_rng(11)
    closes = (100 * np.exp(np.cumsum(rng.normal(0, 0.01, 3_000)))).round(6).tolist()
    opens = [closes[0], *closes[:-1]]
    params = {"fast": 5, "slow": 30, "commission": 0.0005, "initial_cash": 25_000.0}
    result = functions.backtest_bars({"open": opens, "close": closes, **params})
    assert result == run_backtest(bars_csv(tmp_path / "bars.csv", opens, closes), **params)
    assert result["bars"] == 3_000 and result["n_trades"] > 0


def test_backtest_bars_on_no_bars() -> None:
    params = {"fast": 5, "slow": 30, "commission": 0.0, "initial_cash": 1_000.0}
    result = functions.backtest_bars({"open": [], "close": [], **params})
    assert result == {
        "final_equity": 1_000.0,
        "total_return": 0.0,
        "n_trades": 0,
        "max_drawdown": 0.0,
        "bars": 0,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"fast": 30},
        {"fast": 0},
        {"fast": 5.0},
        {"commission": 1.0},
        {"initial_cash": float("nan")},
        {"open": [1.0, -1.0]},
        {"close": [1.0]},
    ],
)
def test_backtest_bars_checks_its_payload(change: dict[str, Any]) -> None:
    payload = {
        "open": [1.0, 2.0],
        "close": [1.5, 2.5],
        "fast": 5,
        "slow": 30,
        "commission": 0.0,
        "initial_cash": 1.0,
    }
    with pytest.raises(ValueError):
        functions.backtest_bars({**payload, **change})


# --------------------------------------------------------------------------------------------------
# the market-data tools, through the cache


@pytest.fixture
def market() -> MarketData:
    frozen = dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp()
    return MarketData(
        provider=SyntheticProvider(clock=lambda: frozen),
        cache=MarketDataCache(
            namespace="test:tools", provider="synthetic", fresh_seconds=60, fetch_timeout=5
        ),
    )


async def test_quote_is_answered_in_process(market: MarketData) -> None:
    tool = get_tool("quote")
    assert not tool.sandboxed
    prepared = await prepare(
        tool, validate_arguments("quote", {"symbol": "aapl"}), ToolContext(market=market)
    )
    assert prepared.function is None and not prepared.needs_sandbox
    quote = call_inline(prepared)
    assert set(quote) == {"symbol", "bid", "ask", "last", "timestamp"} and quote["symbol"] == "AAPL"


async def test_backtest_fetches_bars_and_equals_run_backtest(market: MarketData, tmp_path: Path) -> None:
    from app.market import service

    args = validate_arguments("backtest", BACKTEST)
    assert isinstance(args, BacktestArgs)
    prepared = await prepare(get_tool("backtest"), args, ToolContext(market=market))
    assert prepared.function == "app.tools.functions:backtest_bars"
    result = call_inline(prepared)
    # the same bars, as the bars route serves them, written to a CSV for run_backtest
    body, _ = await service.get_bars(
        market=market,
        symbol="AAPL",
        timeframe=registry.Timeframe("1Hour"),
        start=args.start,
        end=args.end,
        limit=10_000,
    )
    bars = json.loads(body)["bars"]
    assert len(bars) == result["bars"] > 100
    path = tmp_path / "aapl.csv"
    with path.open("w") as f:
        f.write("timestamp,open,high,low,close,volume\n")
        f.writelines(f"{b['t']},{b['o']},{b['h']},{b['l']},{b['c']},{b['v']}\n" for b in bars)
    assert result == run_backtest(path, fast=5, slow=20, commission=0.001, initial_cash=10_000.0)


async def test_backtest_pages_through_long_ranges(
    market: MarketData, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = await run("backtest", BACKTEST, ToolContext(market=market))
    monkeypatch.setattr(registry, "MAX_BARS_LIMIT", 37)
    assert await run("backtest", BACKTEST, ToolContext(market=market)) == whole
    monkeypatch.setattr(registry, "MAX_BACKTEST_BARS", 100)
    with pytest.raises(Unprocessable) as info:
        await run("backtest", BACKTEST, ToolContext(market=market))
    assert info.value.errors and info.value.errors[0]["field"] == "arguments.start"


async def test_market_tools_without_market_data_are_unavailable() -> None:
    with pytest.raises(Exception) as info:
        await run("quote", QUOTE)
    assert getattr(info.value, "status", None) == 503


# --------------------------------------------------------------------------------------------------
# property: arbitrary JSON never raises anything but a 404 or a 422

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(INJECTIONS[:9] + ["call", "put", "1Day", "AAPL", "2024-01-02", "1e309"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
FIELD_NAMES = sorted({f for args in VALID.values() for f in args} | {"options"})
ARGUMENTS = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), JSON_VALUES, max_size=10)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_call(name: str, raw: object) -> None:
    try:
        args = validate_arguments(name, raw)
    except NotFound:
        assert name not in REGISTRY
    except Unprocessable as exc:
        assert exc.status == 422 and exc.errors
        for error in exc.errors:
            assert error["field"] == "arguments" or error["field"].startswith("arguments.")
    else:
        assert isinstance(args, ToolArgs)
        json.dumps(args.model_dump(mode="json"), allow_nan=False)


@PROPERTY
@given(name=st.sampled_from(BUILTIN) | st.text(max_size=12), raw=JSON_VALUES | ARGUMENTS)
def test_arbitrary_json_only_ever_gives_a_404_or_a_422(name: str, raw: object) -> None:
    check_call(name, raw)


@PROPERTY
@given(data=st.data(), name=st.sampled_from(BUILTIN))
def test_one_hostile_field_in_valid_arguments_is_a_422_naming_it_or_valid(
    data: st.DataObject, name: str
) -> None:
    field = data.draw(st.sampled_from(sorted(VALID[name])))
    value = data.draw(JSON_VALUES)
    raw = {**VALID[name], field: value}
    try:
        validate_arguments(name, raw)
    except Unprocessable as exc:
        fields = [e["field"] for e in exc.errors or []]
        related = {f"arguments.{field}", "arguments.slow", "arguments.end"}  # cross-field rules
        assert any(f.split(".")[:2] == ["arguments", field] or f in related for f in fields), fields


def finite_in(lo: float, hi: float, *, lo_open: bool = True) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, exclude_min=lo_open, allow_nan=False, allow_infinity=False)


OPTIONS = st.fixed_dictionaries(
    {
        "option_type": st.sampled_from(["call", "put"]),
        "spot": finite_in(1e-6, 1e9, lo_open=False),
        "strike": finite_in(1e-6, 1e9, lo_open=False),
        "t_years": finite_in(1e-6, 100, lo_open=False),
        "rate": finite_in(-1, 1, lo_open=False),
        "dividend_yield": finite_in(-1, 1, lo_open=False),
        "sigma": finite_in(1e-4, 10, lo_open=False),
    }
)


@settings(max_examples=300, deadline=None)
@given(options=st.lists(OPTIONS, min_size=1, max_size=8))
async def test_any_valid_option_gives_finite_json_results(options: list[dict[str, Any]]) -> None:
    single = await run("greeks", options[0])
    assert single == bs_greeks(*(options[0][k] for k in OPTION))
    batch = await run("greeks", {"options": options})
    assert len(batch["results"]) == len(options)


@settings(max_examples=300, deadline=None)
@given(option=OPTIONS, price=finite_in(0, 1e9, lo_open=False))
async def test_implied_vol_gives_a_finite_sigma_or_a_422_on_price(
    option: dict[str, Any], price: float
) -> None:
    args = {k: v for k, v in option.items() if k != "sigma"} | {"price": price}
    try:
        result = await run("implied_vol", args)
    except ToolArgumentError as exc:
        assert exc.field == "price"
    else:
        assert math.isfinite(result["sigma"]) and result["sigma"] >= 0


async def test_the_corners_of_the_bounds_give_finite_results() -> None:
    corners = []
    for kind, spot, t, rate, q, sigma in itertools.product(
        ("call", "put"),
        (1e-6, 1.0, 1e9),
        (1e-6, 1.0, 100.0),
        (-1.0, 0.0, 1.0),
        (-1.0, 0.0, 1.0),
        (1e-4, 10.0),
    ):
        forward = spot * math.exp((rate - q) * t)
        for strike in {1e-6, 1e9, spot, min(max(forward, 1e-6), 1e9)}:
            corners.append(
                {"option_type": kind, "spot": spot, "strike": strike, "t_years": t, "rate": rate}
                | {"dividend_yield": q, "sigma": sigma}
            )
    for start in range(0, len(corners), 10_000):
        result = await run("greeks", {"options": corners[start : start + 10_000]})
        assert len(result["results"]) == len(corners[start : start + 10_000])
