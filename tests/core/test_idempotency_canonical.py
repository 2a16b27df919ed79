"""The canonical request behind an Idempotency-Key's fingerprint (app/core/idempotency.py docstring)."""

from __future__ import annotations

import json

import pytest

from app.core.idempotency import canonical_json, request_fingerprint


def fp(body: bytes, **overrides) -> str:
    parts = {"method": "POST", "route": "/v1/orders", "path_params": {}, "query": [], "body": body}
    parts.update(overrides)
    return request_fingerprint(**parts)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(b'{"a":1,"b":2}', b'{"b":2,"a":1}', id="key-order"),
        pytest.param(b'{"a":[1,2]}', b' {\n "a" : [ 1 , 2 ] }\t', id="whitespace"),
        pytest.param(b'{"q":1}', b'{"q":1.0}', id="1-vs-1.0"),
        pytest.param(b'{"q":1}', b'{"q":1e0}', id="1-vs-1e0"),
        pytest.param(b'{"q":1.5}', b'{"q":15E-1}', id="exponent"),
        pytest.param(b'{"q":100}', b'{"q":1.00e2}', id="trailing-zeros"),
        pytest.param(b'{"q":0}', b'{"q":-0.0}', id="negative-zero"),
        pytest.param(b'{"s":"\\u00e9"}', '{"s":"é"}'.encode(), id="escapes"),
        pytest.param(b'{"s":"a\\/b"}', b'{"s":"a/b"}', id="escaped-solidus"),
        pytest.param(b'{"a":1,"a":2}', b'{"a":2}', id="duplicate-key-last-wins"),
        pytest.param('{"s":"x"}'.encode("utf-16"), b'{"s":"x"}', id="utf-16"),
        pytest.param(b'{"o":{"z":null,"y":[true,false]}}', b'{"o":{"y":[true,false],"z":null}}', id="nested"),
    ],
)
def test_the_same_json_value_is_the_same_request(a: bytes, b: bytes) -> None:
    assert canonical_json(a) == canonical_json(b)
    assert fp(a) == fp(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(b'{"q":1}', b'{"q":"1"}', id="number-vs-string"),
        pytest.param(b'{"q":1}', b'{"q":true}', id="number-vs-bool"),
        pytest.param(b'{"q":0}', b'{"q":false}', id="zero-vs-false"),
        pytest.param(b'{"q":null}', b"{}", id="null-vs-missing"),
        pytest.param(b'{"q":0.1}', b'{"q":0.10000000000000001}', id="no-float-rounding"),
        pytest.param(b'{"q":1}', b'{"q":1.0000000000000000000000000000001}', id="beyond-28-digits"),
        pytest.param(b'{"q":[1,2]}', b'{"q":[2,1]}', id="array-order"),
        pytest.param(b'{"s":"A"}', b'{"s":"a"}', id="case"),
        pytest.param(b'{"s":"\\u00e9"}', b'{"s":"e\\u0301"}', id="no-unicode-normalisation"),
        pytest.param(b'{"q":1}', b'{"q":10}', id="magnitude"),
        pytest.param(b'{"q":1}', b'{"q":-1}', id="sign"),
    ],
)
def test_different_json_values_are_different_requests(a: bytes, b: bytes) -> None:
    assert canonical_json(a) != canonical_json(b)
    assert fp(a) != fp(b)


def test_canonical_json_is_sorted_compact_and_exact() -> None:
    assert canonical_json(b'{"b": [1.50, "x"], "a": {"d": 2e3, "c": null}}') == (
        '{"a":{"c":null,"d":2e3},"b":[15e-1,"x"]}'
    )


def test_numbers_that_would_be_expensive_or_unrepresentable_stay_cheap_and_exact() -> None:
    huge_exponent = canonical_json(b'{"q":1e999999999}')
    assert huge_exponent is not None and len(huge_exponent) < 30  # never expanded to a billion digits
    beyond_decimal = canonical_json(b'{"q":1e99999999999999999999}')
    assert beyond_decimal is not None and beyond_decimal != canonical_json(b'{"q":1e99999999999999999998}')
    long_int = b'{"q":' + b"7" * 5000 + b"}"  # past int()'s 4300-digit limit
    assert canonical_json(long_int) == canonical_json(b'{"q":' + b"7" * 5000 + b".0}")


@pytest.mark.parametrize(
    "body", [b"not json", b'{"q":NaN}', b'{"q":Infinity}', b"\xff\xfe\x00garbage", b"[" * 100_000]
)
def test_a_body_that_is_not_json_is_compared_by_its_bytes(body: bytes) -> None:
    assert canonical_json(body) is None
    assert fp(body) == fp(bytes(body))
    assert fp(body) != fp(body + b" ")


def test_an_empty_body_is_not_a_json_string_or_null() -> None:
    assert fp(b"") != fp(b'""') != fp(b"null")
    assert fp(b"") != fp(b"null")


def test_method_route_and_parameters_are_part_of_the_request() -> None:
    body = json.dumps({"a": 1}).encode()
    base = fp(body)
    assert fp(body, method="PUT") != base
    assert fp(body, route="/v1/orders/{id}/cancel") != base
    assert fp(body, path_params={"id": "1"}) != fp(body, path_params={"id": "2"})
    assert fp(body, query=[("a", "1")]) != base
    # Query parameters are sorted by name; a repeated name keeps its order.
    assert fp(body, query=[("a", "1"), ("b", "2")]) == fp(body, query=[("b", "2"), ("a", "1")])
    assert fp(body, query=[("a", "1"), ("a", "2")]) != fp(body, query=[("a", "2"), ("a", "1")])
    assert fp(body, method="post") == base


def test_the_fingerprint_fits_the_column() -> None:
    assert len(fp(b'{"a":1}')) == 64 and int(fp(b'{"a":1}'), 16) >= 0
