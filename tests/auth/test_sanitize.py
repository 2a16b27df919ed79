"""app.core.sanitize on its own: exact outputs for the rules, and properties over generated input."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.sanitize import plain_text, rich_text
from tests.auth.htmlcheck import elements, problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ada Lovelace", "Ada Lovelace"),
        ("  Ada \n\t  Lovelace\u00a0\u3000 ", "Ada Lovelace"),
        ("<b>Ada</b> <i>Lovelace</i>", "Ada Lovelace"),
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("Tom & Jerry", "Tom & Jerry"),
        ("1 < 2 > 0", "1 < 2 > 0"),
        ("<script>alert(1)</script>Bob", "Bob"),
        ("<style>b{}</style>Bob", "Bob"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;Bob", "Bob"),  # decoded markup is markup too
        ("&amp;lt;b&amp;gt;Bob", "Bob"),
        ("<!-- hidden -->Bob", "Bob"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFC
        ('O\'Brien "Bob"', 'O\'Brien "Bob"'),
        ("", ""),
        ("<p></p>", ""),
    ],
)
def test_plain_text(raw: str, expected: str) -> None:
    assert plain_text(raw, max_length=100) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<p>Hi <b>there</b></p>", "<p>Hi <b>there</b></p>"),
        ("<p>a<br>b</p>", "<p>a<br>b</p>"),
        (
            "<ul><li>1</li><li><code>x=1</code></li></ul><ol><li><em>e</em><strong>s</strong><i>i</i></li></ol>",
            "<ul><li>1</li><li><code>x=1</code></li></ul><ol><li><em>e</em><strong>s</strong><i>i</i></li></ol>",
        ),
        (
            '<a href="https://x.example/">x</a>',
            '<a href="https://x.example/" rel="noopener noreferrer nofollow">x</a>',
        ),
        (
            '<a href="http://x.example/">x</a>',
            '<a href="http://x.example/" rel="noopener noreferrer nofollow">x</a>',
        ),
        (
            '<a href="mailto:a@x.example">m</a>',
            '<a href="mailto:a@x.example" rel="noopener noreferrer nofollow">m</a>',
        ),
        ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer nofollow">x</a>'),
        ('<a href="/relative">x</a>', '<a rel="noopener noreferrer nofollow">x</a>'),
        ('<a href="//evil.example/">x</a>', '<a rel="noopener noreferrer nofollow">x</a>'),
        (
            '<a href="https://x.example/" rel="opener" target="_blank" title="t" id="i">x</a>',
            '<a href="https://x.example/" rel="noopener noreferrer nofollow">x</a>',
        ),
        ('<p class="c" style="color:red" onclick="x()" lang="en">p</p>', "<p>p</p>"),
        ("<script>alert(1)</script><p>ok</p>", "<p>ok</p>"),
        ("<style>p{}</style><p>ok</p>", "<p>ok</p>"),
        ("<div><span>text</span></div>", "text"),
        ("<h1>Title</h1><img src=x>", "Title"),
        ("<p>unclosed <b>bold", "<p>unclosed <b>bold</b></p>"),
        ("a < b & c", "a &lt; b &amp; c"),
        ("<!-- c --><p>x</p>", "<p>x</p>"),
        ("\r\n<p>x</p>\r\n", "<p>x</p>"),
    ],
)
def test_rich_text(raw: str, expected: str) -> None:
    assert rich_text(raw, max_length=5000) == expected


@pytest.mark.parametrize("func", [plain_text, rich_text])
@pytest.mark.parametrize(
    "raw",
    [
        "a\x00b",
        "a\x07b",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",
        "\u202eabc",
        "\u2066abc",
        "a\ufffeb",
        "a\U0010ffffb",
        "a\ud800b",
        "a&#x7;b",
        "a&#x1b;b",
        "a&#x202e;b",
        "a&#x81;b",
        "a&#xfffe;b",
    ],
)
def test_control_and_spoofing_characters_are_refused(func, raw: str) -> None:
    with pytest.raises(ValueError):
        func(raw, max_length=100)


@pytest.mark.parametrize("func", [plain_text, rich_text])
def test_tab_newline_carriage_return_and_joiners_are_allowed(func) -> None:
    assert func("a\tb\nc\rd", max_length=100)
    assert "\u200d" in func("👨\u200d👩\u200d👧", max_length=100)  # ZWJ emoji sequence


def test_length_is_checked_after_cleaning() -> None:
    assert plain_text("<b>" + "x" * 10 + "</b>", max_length=10) == "x" * 10
    with pytest.raises(ValueError, match="at most 10"):
        plain_text("x" * 11, max_length=10)
    with pytest.raises(ValueError):
        rich_text("<p>" + "x" * 10 + "</p>", max_length=10)
    # Raw input is bounded too, so cleaning work is bounded.
    with pytest.raises(ValueError):
        plain_text("<b></b>" * 1000, max_length=10)


# ---- properties -------------------------------------------------------------------------------------
_FRAGMENTS = st.sampled_from(
    [
        "<",
        ">",
        "&",
        ";",
        "/",
        "!",
        "?",
        "-",
        "--",
        "=",
        '"',
        "'",
        "`",
        " ",
        "\n",
        "\t",
        "#",
        "x",
        "a",
        "1",
        "script",
        "img",
        "svg",
        "math",
        "style",
        "a",
        "p",
        "b",
        "br",
        "iframe",
        "href",
        "src",
        "onerror",
        "on",
        "javascript:",
        "data:",
        "vbscript:",
        "java\tscript:",
        "&lt;",
        "&gt;",
        "&amp;",
        "&#60;",
        "&#x3c;",
        "&quot;",
        "&colon;",
        "&Tab;",
        "&#0;",
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "<?",
        "</",
        "<a href=",
        "<img src=x onerror=",
        "<svg onload=",
        "<p>",
        "</p>",
        "<b>",
        "</b>",
        "<a>",
        "</a>",
        "é",
        "\u00a0",
        "\u200b",
        "😀",
        "\ufeff",
    ]
)
_MARKUPISH = st.lists(_FRAGMENTS, max_size=40).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MARKUPISH)
def test_plain_text_never_contains_markup_and_is_idempotent(raw: str) -> None:
    try:
        out = plain_text(raw, max_length=1000)
    except ValueError:
        return
    assert elements(out) == [], out
    assert plain_text(out, max_length=1000) == out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MARKUPISH)
def test_rich_text_is_safe_and_idempotent(raw: str) -> None:
    try:
        out = rich_text(raw, max_length=5000)
    except ValueError:
        return
    assert problems(out, plain=False) == [], out
    assert rich_text(out, max_length=5000) == out


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="<&"), max_size=80)
)
def test_plain_text_keeps_ordinary_text(raw: str) -> None:
    try:
        out = plain_text(raw, max_length=1000)
    except ValueError:
        return  # bidi controls / noncharacters
    assert out == " ".join(out.split())
    # Without markup characters, only whitespace and normalisation may change.
    assert out == " ".join(unicodedata.normalize("NFC", raw).split())


def test_c1_references_decode_as_browsers_do() -> None:
    # HTML maps &#x80;–&#x9F; through windows-1252 (&#x85; is "…"); that is text, not a control.
    assert plain_text("a&#x85;b", max_length=10) == "a\u2026b"
