"""The tool registry: the only things an assistant or a front end can run, by exact name.

A :class:`Tool` is a name, a description, a strict argument model (:mod:`app.tools.schemas`) and
how to run it, in two steps:

1. ``prepare`` – async, in the app process: turns the validated arguments into a plain-data payload.
   Tools that need market data (``backtest``, ``quote``) fetch it here, through the app's
   market-data cache (``app.market.service``), exactly like the HTTP routes; the pure tools just
   dump their arguments.
2. ``function`` – a ``"module:function"`` reference into :mod:`app.tools.functions`, run by the
   sandbox in a worker process on that payload (CPU work: Greeks, implied volatility, the backtest
   over the fetched bars). A tool without a function (``quote``: no CPU work) is answered by its
   ``prepare`` step alone: :attr:`Prepared.function` is ``None`` and the payload *is* the result.

Callers: ``tool = get_tool(name)``; ``args = validate_arguments(name, raw)``;
``prepared = await prepare(tool, args, ctx)``; then ``sandbox.run(prepared.function,
prepared.payload)`` when ``prepared.function`` is set (``call_inline`` runs it in-process, for tests
and benchmarks). ``resolve_function`` refuses any reference that is not a registered tool's.

Validation failures raise :class:`~app.core.errors.Unprocessable` (422) whose ``errors`` name each
argument by its dotted path under ``arguments`` (``arguments.spot``, ``arguments.options.3.sigma``,
``arguments`` itself when the value is not an object); an unknown tool raises ``NotFound`` (404).

Published schemas (``GET /v1/tools``, MCP ``tools/list``)
--------------------------------------------------------
:func:`published_schema` turns each model's pydantic JSON Schema into one that OpenAI's strict
function calling (``"strict": true``) and Anthropic's strict tool use (``"strict": true`` beside
``input_schema``) both accept as it is. What the providers document:

* OpenAI, Structured Outputs "Supported schemas"
  (https://platform.openai.com/docs/guides/structured-outputs#supported-schemas, and
  https://platform.openai.com/docs/guides/function-calling for ``strict`` on functions): every
  object needs ``additionalProperties: false`` and must list *every* property in ``required``;
  an optional field is a union with ``null``; the root must be an object, not ``anyOf``; ``anyOf``
  is allowed below it, ``oneOf``/``allOf``-style composition is refused ("'oneOf' is not
  permitted"); ``$defs``/``$ref`` are allowed but a ``$ref`` with sibling keys is not (the
  official SDK inlines those: ``openai/lib/_pydantic.py``); at most 100 properties, 5 levels of
  nesting, 500 enum values and 15,000 characters of names and enum values. Support for
  ``pattern``, ``format``, ``minimum``/``maximum``, ``minItems``/``maxItems`` was added later and
  not for every model (older snapshots and fine-tuned models refuse them; Azure OpenAI's copy of
  the guide still lists them as unsupported).
* Anthropic, "JSON Schema limitations"
  (https://platform.claude.com/docs/en/build-with-claude/structured-outputs#json-schema-limitations,
  linked from https://platform.claude.com/docs/en/agents-and-tools/tool-use/strict-tool-use):
  supported are the basic types, ``enum`` of primitives, ``const``, ``anyOf``, ``allOf`` (limited),
  local ``$ref``/``$defs``, ``required``, ``additionalProperties: false`` (required on objects),
  a short list of string ``format`` values and ``minItems`` of 0 or 1 only; *not* supported are
  numerical constraints (``minimum``, ``maximum``, ``multipleOf``, …), string length constraints
  (``minLength``/``maxLength``), other array constraints, recursive schemas. The official SDK
  (``anthropic/lib/_parse/_transform.py``) strips ``pattern`` as well and moves every stripped
  constraint into the description.

Neither provider enforces numeric bounds, so the server checks all of them itself (the pydantic
models do). The published schema therefore keeps only what both accept everywhere –
``type``, ``properties``, ``required``, ``additionalProperties: false``, ``items``, ``enum``,
``anyOf`` (for ``X | null`` only) and ``description`` (:data:`PUBLISHED_KEYWORDS`) – with every
``$ref`` inlined, every property required, every optional property nullable, and no ``title``,
``default`` or ``format``. Each stripped constraint is written into the property's description
("Constraints: >= 1e-06, <= 1000000000."), so a model still sees the bounds it must respect.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import importlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from pydantic import ValidationError

from app.core.errors import NotFound, ServiceUnavailable, Unprocessable
from app.market import service as market_service
from app.market.schemas import MAX_BARS_LIMIT
from app.providers.market_data import MarketData
from app.providers.market_data.base import Timeframe
from app.tools.functions import ToolArgumentError
from app.tools.schemas import BacktestArgs, GreeksArgs, ImpliedVolArgs, QuoteArgs, ToolArgs

__all__ = [
    "MAX_BACKTEST_BARS",
    "PUBLISHED_KEYWORDS",
    "REGISTRY",
    "Prepared",
    "Tool",
    "ToolContext",
    "argument_error",
    "call_inline",
    "check_strict_schema",
    "get_tool",
    "prepare",
    "published_schema",
    "published_tools",
    "register",
    "resolve_function",
    "validate_arguments",
]

#: Bars one ``backtest`` call may read (10 market-data pages of 10,000); a longer range is a 422.
MAX_BACKTEST_BARS: Final = 100_000
#: Errors listed in one 422 (a 10,000-option batch can hold 70,000 problems).
MAX_REPORTED_ERRORS: Final = 50
#: A path segment or tool name longer than this is shortened in error messages (keys are hostile too).
MAX_ECHO_CHARS: Final = 64
#: Tool names: what both providers accept for a function/tool name, lower case.
TOOL_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: The only JSON Schema keywords a published schema contains (see the module docstring).
PUBLISHED_KEYWORDS: Final = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "anyOf", "description"}
)
_JSON_TYPES: Final = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


# --------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a ``prepare`` step may use from the app process."""

    market: MarketData | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """The outcome of a ``prepare`` step: run ``function`` (a ``module:function`` reference) on
    ``payload`` in the sandbox, or – ``function`` is ``None`` – ``payload`` is the final result."""

    function: str | None
    payload: dict[str, Any]

    @property
    def needs_sandbox(self) -> bool:
        return self.function is not None


PrepareStep = Callable[[Any, ToolContext], Awaitable[Prepared]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    args_model: type[ToolArgs]
    #: ``"module:function"`` the sandbox runs on the payload; ``None``: answered in-process by ``prepare``.
    function: str | None
    #: Async step in the app process (fetches data); ``None``: the payload is the validated arguments.
    prepare: PrepareStep | None = field(default=None, compare=False)

    @property
    def sandboxed(self) -> bool:
        return self.function is not None


REGISTRY: dict[str, Tool] = {}


def register(tool: Tool, *, replace: bool = False) -> Tool:
    """Add a tool (the built-in ones below; tests add their own). Checks the name and that the
    published schema is strict-compatible, so a bad tool fails at import, not at a provider."""
    if not TOOL_NAME_PATTERN.fullmatch(tool.name):
        raise ValueError(f"tool name {tool.name!r} must match {TOOL_NAME_PATTERN.pattern}")
    if tool.name in REGISTRY and not replace:
        raise ValueError(f"a tool named {tool.name!r} is already registered")
    if not issubclass(tool.args_model, ToolArgs):
        raise TypeError("a tool's args_model must derive from app.tools.schemas.ToolArgs")
    if tool.function is None and tool.prepare is None:
        raise ValueError("a tool needs a sandbox function, a prepare step, or both")
    check_strict_schema(published_schema(tool))
    REGISTRY[tool.name] = tool
    return tool


def _clip(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def get_tool(name: object) -> Tool:
    """The tool registered under exactly ``name`` (no case folding, no prefixes); else 404."""
    tool = REGISTRY.get(name) if isinstance(name, str) else None
    if tool is None:
        known = ", ".join(sorted(REGISTRY))
        raise NotFound(f"No tool named {_clip(name)!r}. The tools are: {known}.")
    return tool


# --------------------------------------------------------------------------------------------------
# validation


_OBJECT_ERRORS: Final = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _error_path(loc: Iterable[int | str]) -> str:
    return ".".join(["arguments", *(_clip(str(part)) for part in loc)])


def _error_message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown argument"
    if kind in _OBJECT_ERRORS:
        return "must be a JSON object"
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def _unprocessable(errors: list[dict[str, str]], total: int | None = None) -> Unprocessable:
    total = len(errors) if total is None else total
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    more = f" (and {total - 5} more)" if total > 5 else ""
    return Unprocessable(f"The arguments are invalid: {summary}{more}", errors=errors)


def validate_arguments(name: object, raw: object) -> ToolArgs:
    """``raw`` (decoded JSON) validated by the tool's model; 404 for an unknown tool, 422 naming each
    bad argument by its dotted path (at most :data:`MAX_REPORTED_ERRORS` of them)."""
    tool = get_tool(name)
    if not isinstance(raw, dict):
        raise _unprocessable([{"field": "arguments", "message": "must be a JSON object"}])
    try:
        return tool.args_model.model_validate(raw)
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_context=False, include_input=False)
        errors = [
            {"field": _error_path(err["loc"]), "message": _error_message(err)}
            for err in found[:MAX_REPORTED_ERRORS]
        ]
        raise _unprocessable(errors, len(found)) from None


def argument_error(exc: ToolArgumentError) -> Unprocessable:
    """The 422 for an argument the computation refused (raised by a sandbox function)."""
    return _unprocessable([{"field": _error_path([exc.field]), "message": exc.message}])


# --------------------------------------------------------------------------------------------------
# running


async def prepare(tool: Tool, args: ToolArgs, ctx: ToolContext) -> Prepared:
    """The app-process step of a call: the payload for the sandbox, or the result itself."""
    if tool.prepare is not None:
        return await tool.prepare(args, ctx)
    return Prepared(tool.function, args.model_dump())


def resolve_function(ref: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The callable behind a registered tool's ``module:function`` reference; ``LookupError`` for
    any other reference, so nothing outside the registry can be called."""
    if ref not in {tool.function for tool in REGISTRY.values()}:
        raise LookupError(f"{_clip(ref)!r} is not a registered tool function")
    module_name, _, attr = ref.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    return cast(Callable[[Mapping[str, Any]], dict[str, Any]], function)


def call_inline(prepared: Prepared) -> dict[str, Any]:
    """Finish a call in this process (tests, benchmarks): run the function, or return the result.
    Production calls go through the sandbox instead."""
    if prepared.function is None:
        return prepared.payload
    return resolve_function(prepared.function)(prepared.payload)


# --------------------------------------------------------------------------------------------------
# the market-data tools' prepare steps


def _market(ctx: ToolContext) -> MarketData:
    if ctx.market is None:
        raise ServiceUnavailable("Market data is not available to tools in this process.")
    return ctx.market


async def _prepare_quote(args: QuoteArgs, ctx: ToolContext) -> Prepared:
    quote, _status = await market_service.get_quote(market=_market(ctx), symbol=args.symbol)
    return Prepared(None, dict(quote))


def _decode_bars(body: bytes) -> tuple[list[float], list[float], str | None]:
    """Opens, closes and the last bar's time from a bars answer (the cached JSON body)."""
    bars = json.loads(body)["bars"]
    opens = [float(bar["o"]) for bar in bars]
    closes = [float(bar["c"]) for bar in bars]
    return opens, closes, (bars[-1]["t"] if bars else None)


_DECODE_IN_THREAD_BYTES: Final = 64 * 1024  # ~600 bars: above it the decode leaves the event loop


async def _prepare_backtest(args: BacktestArgs, ctx: ToolContext) -> Prepared:
    """Fetch the range's bars page by page (10,000 a page, each page cached like a bars request),
    keep only opens and closes, and hand them to the sandbox."""
    market = _market(ctx)
    timeframe = Timeframe(args.timeframe)
    opens: list[float] = []
    closes: list[float] = []
    start = args.start
    while True:
        body, _status = await market_service.get_bars(
            market=market,
            symbol=args.symbol,
            timeframe=timeframe,
            start=start,
            end=args.end,
            limit=MAX_BARS_LIMIT,
        )
        if len(body) > _DECODE_IN_THREAD_BYTES:
            page_opens, page_closes, last = await asyncio.to_thread(_decode_bars, body)
        else:
            page_opens, page_closes, last = _decode_bars(body)
        opens += page_opens
        closes += page_closes
        if len(opens) > MAX_BACKTEST_BARS:
            raise _unprocessable(
                [
                    {
                        "field": "arguments.start",
                        "message": f"the range holds more than {MAX_BACKTEST_BARS} {timeframe.value} bars: "
                        "narrow it or use a longer timeframe",
                    }
                ]
            )
        if len(page_opens) < MAX_BARS_LIMIT or last is None:
            break
        start = dt.datetime.fromisoformat(last) + dt.timedelta(microseconds=1)  # next grid instant
        if start > args.end:
            break
    return Prepared(
        "app.tools.functions:backtest_bars",
        {
            "open": opens,
            "close": closes,
            "fast": args.fast,
            "slow": args.slow,
            "commission": args.commission,
            "initial_cash": args.initial_cash,
        },
    )


# --------------------------------------------------------------------------------------------------
# published schemas


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _count(n: object, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_CONSTRAINTS: Final[dict[str, Callable[[Any], str]]] = {
    "exclusiveMinimum": lambda v: f"> {_number(v)}",
    "minimum": lambda v: f">= {_number(v)}",
    "exclusiveMaximum": lambda v: f"< {_number(v)}",
    "maximum": lambda v: f"<= {_number(v)}",
    "multipleOf": lambda v: f"a multiple of {_number(v)}",
    "minLength": lambda v: f"at least {_count(v, 'character')}",
    "maxLength": lambda v: f"at most {_count(v, 'character')}",
    "pattern": lambda v: f"matching {v}",
    "minItems": lambda v: f"at least {_count(v, 'item')}",
    "maxItems": lambda v: f"at most {_count(v, 'item')}",
    "format": lambda v: f"format {v}",
}
_CONSTRAINT_RANK: Final = {key: rank for rank, key in enumerate(_CONSTRAINTS)}
_DROPPED: Final = frozenset({"title", "default", "examples", "$defs"})
_KEY_ORDER: Final = (
    "type",
    "description",
    "enum",
    "anyOf",
    "items",
    "properties",
    "required",
    "additionalProperties",
)


def _is_nullable(schema: Mapping[str, Any]) -> bool:
    if schema.get("type") == "null":
        return True
    return any(variant.get("type") == "null" for variant in schema.get("anyOf", ()))


#: A stripped constraint: (its keyword's rank in _CONSTRAINTS, the text for the description).
Note = tuple[int, str]


def _with_notes(schema: dict[str, Any], notes: list[Note]) -> dict[str, Any]:
    """``schema`` with the stripped constraints appended to its description (lower bounds first)."""
    if not notes:
        return schema
    text = "Constraints: " + ", ".join(note for _, note in sorted(notes)) + "."
    description = schema.get("description")
    schema["description"] = f"{description} {text}" if description else text
    return {key: schema[key] for key in _KEY_ORDER if key in schema}


def _strict_node(
    node: Mapping[str, Any], defs: Mapping[str, Any], seen: tuple[str, ...]
) -> tuple[dict[str, Any], list[Note]]:
    """One schema node made strict; returns it and the constraints stripped from it (unattached)."""
    ref = node.get("$ref")
    if ref is not None:
        name = str(ref).removeprefix("#/$defs/")
        if name in seen or name not in defs:
            raise ValueError(f"unsupported $ref {ref!r} (recursive or not local)")
        node = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        seen = (*seen, name)
    out: dict[str, Any] = {}
    notes: list[Note] = []
    for key, value in node.items():
        if key in _CONSTRAINTS:
            notes.append((_CONSTRAINT_RANK[key], _CONSTRAINTS[key](value)))
        elif key in _DROPPED or key in ("properties", "required", "additionalProperties"):
            continue
        elif key in ("type", "enum", "description"):
            out[key] = value
        elif key == "items":
            out["items"] = _strict_property(value, defs, seen)
        elif key == "anyOf":
            variants = []
            for variant in value:
                schema, inner = _strict_node(variant, defs, seen)
                if len(value) > 1:
                    schema.pop("description", None)  # the union's own description speaks for it
                variants.append(schema)
                notes += inner
            out["anyOf"] = variants
        else:
            raise ValueError(f"JSON Schema keyword {key!r} has no strict-mode translation")
    if node.get("type") == "object":
        if node.get("additionalProperties", False) is not False:
            raise ValueError("objects must not allow additional properties")
        properties = node.get("properties", {})
        required = set(node.get("required", ()))
        out["properties"] = {}
        for name, sub in properties.items():
            schema = _strict_property(sub, defs, seen)
            if name not in required and not _is_nullable(schema):
                description = schema.pop("description", None)
                schema = {"anyOf": [schema, {"type": "null"}]}
                if description is not None:
                    schema["description"] = description
            out["properties"][name] = schema
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return {key: out[key] for key in _KEY_ORDER if key in out}, notes


def _strict_property(
    node: Mapping[str, Any], defs: Mapping[str, Any], seen: tuple[str, ...]
) -> dict[str, Any]:
    schema, notes = _strict_node(node, defs, seen)
    return _with_notes(schema, notes)


@functools.cache
def _published(model: type[ToolArgs]) -> dict[str, Any]:
    source = model.model_json_schema()
    schema, notes = _strict_node(source, source.get("$defs", {}), ())
    if schema.get("type") != "object":
        raise ValueError("a tool's parameters must be a JSON object")
    schema.pop("description", None)  # the model's docstring: the tool description speaks for it
    return _with_notes(schema, notes)


def published_schema(tool: Tool) -> dict[str, Any]:
    """The tool's parameters as a strict-mode JSON Schema (see the module docstring); a fresh copy."""
    return copy.deepcopy(_published(tool.args_model))


def published_tools() -> list[dict[str, Any]]:
    """``GET /v1/tools``: ``[{name, description, parameters}]`` in registration order."""
    return [
        {"name": tool.name, "description": tool.description, "parameters": published_schema(tool)}
        for tool in REGISTRY.values()
    ]


def check_strict_schema(schema: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``schema`` keeps the strict-mode rules of both providers: an object
    root; only :data:`PUBLISHED_KEYWORDS`; every object closed with every property required;
    ``anyOf`` only as ``X | null``; at most 5 levels, 100 properties, 500 enum values, 15,000
    characters of names and enum values."""
    if schema.get("type") != "object":
        raise ValueError("the root must be an object")
    counts = {"properties": 0, "enum": 0, "chars": 0}

    def walk(node: Mapping[str, Any], path: str, depth: int) -> None:
        extra = set(node) - PUBLISHED_KEYWORDS
        if extra:
            raise ValueError(f"{path}: keywords {sorted(extra)} are not strict-compatible")
        kind = node.get("type")
        if kind is not None and kind not in _JSON_TYPES:
            raise ValueError(f"{path}: type {kind!r} is not a single JSON type")
        if "anyOf" in node:
            variants = node["anyOf"]
            if kind is not None or len(variants) != 2 or sum(v.get("type") == "null" for v in variants) != 1:
                raise ValueError(f"{path}: anyOf is only used for 'X or null'")
            for i, variant in enumerate(variants):
                walk(variant, f"{path}.anyOf.{i}", depth)
        elif kind is None:
            raise ValueError(f"{path}: every schema needs a type")
        if "enum" in node:
            counts["enum"] += len(node["enum"])
            counts["chars"] += sum(len(str(v)) for v in node["enum"])
        if kind == "object":
            if depth > 5:
                raise ValueError(f"{path}: nested deeper than 5 levels")
            properties = node.get("properties")
            if not isinstance(properties, dict) or node.get("additionalProperties") is not False:
                raise ValueError(f"{path}: objects need properties and additionalProperties: false")
            if list(node.get("required", ())) != list(properties):
                raise ValueError(f"{path}: every property must be listed in required")
            counts["properties"] += len(properties)
            for name, sub in properties.items():
                counts["chars"] += len(name)
                walk(sub, f"{path}.{name}", depth + 1)
        elif any(k in node for k in ("properties", "required", "additionalProperties")):
            raise ValueError(f"{path}: object keywords on a non-object")
        if kind == "array":
            if "items" not in node:
                raise ValueError(f"{path}: arrays need items")
            walk(node["items"], f"{path}.items", depth)
        elif "items" in node:
            raise ValueError(f"{path}: items on a non-array")

    walk(schema, "parameters", 1)
    if counts["properties"] > 100 or counts["enum"] > 500 or counts["chars"] > 15_000:
        raise ValueError(f"schema too large for strict mode: {counts}")


# --------------------------------------------------------------------------------------------------
# the tools

register(
    Tool(
        name="greeks",
        description=(
            "Black-Scholes-Merton price and Greeks of European options with a continuous dividend yield. "
            "Either one option (option_type, spot, strike, t_years, rate, dividend_yield, sigma; options "
            "null) -> {price, delta, gamma, vega, theta, rho}, or a batch (options: up to 10000 of those "
            "objects; the single-option fields null) -> {results: [{price, delta, gamma, vega, theta, "
            "rho}, ...]} in input order. Raw partial derivatives: vega = dV/dsigma, theta = dV/dt per "
            "year (calendar time to expiry decreasing), rho = dV/drate; no per-day or per-percent scaling."
        ),
        args_model=GreeksArgs,
        function="app.tools.functions:greeks",
    )
)
register(
    Tool(
        name="implied_vol",
        description=(
            "Black-Scholes-Merton implied volatility of one European option from its observed price "
            "-> {sigma} (per year, as a fraction). A price outside the no-arbitrage bounds is refused."
        ),
        args_model=ImpliedVolArgs,
        function="app.tools.functions:implied_vol",
    )
)
register(
    Tool(
        name="backtest",
        description=(
            "SMA-crossover backtest on the market-data provider's bars for one symbol between start and "
            "end: long when the fast simple moving average of closes is above the slow one, else flat; "
            "trades at the next bar's open, all-in, fractional shares, commission per fill. -> "
            "{final_equity, total_return, n_trades, max_drawdown, bars}. At most "
            f"{MAX_BACKTEST_BARS} bars per call."
        ),
        args_model=BacktestArgs,
        function="app.tools.functions:backtest_bars",
        prepare=_prepare_backtest,
    )
)
register(
    Tool(
        name="quote",
        description=(
            "Latest quote for one symbol -> {symbol, bid, ask, last, timestamp}; prices are decimal "
            "strings, last is null when there is no trade, timestamp is UTC ISO 8601."
        ),
        args_model=QuoteArgs,
        function=None,
        prepare=_prepare_quote,
    )
)
