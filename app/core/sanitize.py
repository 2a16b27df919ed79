"""The one place user-supplied markup is handled (nh3, the Python binding of Ammonia).

Every user-supplied text field in the app goes through one of two functions, on input, before
storage; the stored value is what every later response returns.

``plain_text(value, *, max_length)`` — names, titles, labels.
    The input is read as an HTML fragment and reduced to the text a browser would show: every tag
    is removed (text content kept; the content of script/style and other raw-text or embedding
    elements is dropped), character references are decoded to the characters they stand for,
    Unicode is NFC-normalised and whitespace runs collapse to one space.
    The result is stored and returned **as text, not HTML** (``"Tom & Jerry"``, not
    ``"Tom &amp; Jerry"``): JSON clients show it verbatim, and a front end inserts it with
    ``textContent`` / React's default escaping. Decoding is repeated until the value no longer
    changes, so the stored text also reads the same when parsed as HTML: it contains nothing an
    HTML parser would treat as markup (no ``<`` that opens a tag or comment, no character
    reference). A front end that wrongly uses ``innerHTML`` therefore still gets no element —
    defence in depth, not a licence to skip output encoding (attribute contexts still need it).

``rich_text(value, *, max_length)`` — the profile bio and other formatted text.
    Stored and returned as **sanitized HTML**: only ``p br b i em strong code ul ol li a[href]``
    survive, ``href`` must be an absolute ``http``/``https``/``mailto`` URL (relative URLs are
    dropped), every link gets ``rel="noopener noreferrer nofollow"``, comments are removed and the
    content of script/style (and similar) elements is dropped, not shown as text. The allowlist has
    no raw-text or foreign-content (SVG/MathML) element, so the serialized output re-parses to the
    same tree (no mutation XSS); cleaning is repeated until it is a fixed point.

Both reject (``ValueError``, which becomes a 422 naming the field when raised from a request
model's validator) control characters other than tab/newline/carriage return, lone surrogates,
Unicode noncharacters and the bidirectional embedding/override/isolate controls (used to spoof how a
name reads), whether typed raw or written as a character reference; and both bound the length of
the stored value (``max_length`` characters) and, so cleaning work is bounded, of the raw input.
An input that is empty after cleaning returns ``""``; callers decide whether that means "unset".
"""

from __future__ import annotations

import html
import re
import unicodedata

import nh3

__all__ = [
    "RICH_TEXT_TAGS",
    "RICH_TEXT_URL_SCHEMES",
    "LINK_REL",
    "TEXT_PATTERN",
    "NONBLANK_TEXT_PATTERN",
    "plain_text",
    "rich_text",
]

RICH_TEXT_TAGS = frozenset({"p", "br", "b", "i", "em", "strong", "code", "ul", "ol", "li", "a"})
# "*": set() replaces Ammonia's default generic attributes (lang, title): the allowlist is exact.
RICH_TEXT_ATTRIBUTES: dict[str, set[str]] = {"a": {"href"}, "*": set()}
RICH_TEXT_URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"

# Elements whose *content* is dropped with them: scripts and styles (their text is code, not prose),
# and raw-text / embedding / foreign elements whose content is not visible text either.
DROP_CONTENT_TAGS = frozenset(
    {
        "script",
        "style",
        "template",
        "noscript",
        "noembed",
        "noframes",
        "xmp",
        "textarea",
        "title",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "svg",
        "math",
        "select",
    }
)

# JSON Schema ``pattern`` (ECMA-262 and Python ``re`` read it alike) for a text field cleaned here: none of
# the characters _reject_forbidden_characters refuses when typed raw. Lone surrogates are not Unicode
# text, so no pattern names them; the astral noncharacters (U+1FFFE, U+2FFFF, ...) are left out too: a
# pattern without the "u" flag cannot name them portably. Both are still refused (422).
_REFUSED_CLASS = (
    "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F"
    "\\u202A-\\u202E\\u2066-\\u2069\\uFDD0-\\uFDEF\\uFFFE\\uFFFF"
)
TEXT_PATTERN = f"^[^{_REFUSED_CLASS}]*$"
# The same, with at least one character that is not whitespace (a field that must not clean to "").
NONBLANK_TEXT_PATTERN = f"^[^{_REFUSED_CLASS}]*[^{_REFUSED_CLASS}\\s][^{_REFUSED_CLASS}]*$"

# Raw input may be longer than the stored value (markup, references), but not unboundedly so.
RAW_LENGTH_FACTOR = 4
RAW_LENGTH_SLACK = 256
MAX_DECODE_PASSES = 4

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ALLOWED_CC = frozenset("\t\n\r")
# Anything an HTML tokenizer in the data state would read as the start of markup.
_MARKUP_START = re.compile(r"<[A-Za-z/!?]")

_PLAIN = nh3.Cleaner(
    tags=set(),
    clean_content_tags=set(DROP_CONTENT_TAGS),
    attributes={"*": set()},
    strip_comments=True,
    link_rel=None,
)
_RICH = nh3.Cleaner(
    tags=set(RICH_TEXT_TAGS),
    clean_content_tags=set(DROP_CONTENT_TAGS),
    attributes={tag: set(attrs) for tag, attrs in RICH_TEXT_ATTRIBUTES.items()},
    url_schemes=set(RICH_TEXT_URL_SCHEMES),
    url_relative="deny",
    link_rel=LINK_REL,
    strip_comments=True,
)


def _is_noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _reject_forbidden_characters(value: str) -> None:
    for ch in value:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            if ch in _ALLOWED_CC:
                continue
            raise ValueError(f"must not contain control characters (found U+{code:04X})")
        if code < 0x7F:
            continue
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("must be valid Unicode text (found a lone surrogate)")
        if ch in _BIDI_CONTROLS:
            raise ValueError(f"must not contain bidirectional override characters (found U+{code:04X})")
        if _is_noncharacter(code):
            raise ValueError(f"must not contain Unicode noncharacters (found U+{code:04X})")


def _check_raw(value: str, max_length: int) -> None:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    if max_length < 1:
        raise ValueError("max_length must be positive")
    limit = max_length * RAW_LENGTH_FACTOR + RAW_LENGTH_SLACK
    if len(value) > limit:
        raise ValueError(f"is too long: at most {max_length} characters")
    _reject_forbidden_characters(value)


def _check_length(value: str, max_length: int) -> None:
    if len(value) > max_length:
        raise ValueError(f"is too long: at most {max_length} characters after cleaning (got {len(value)})")


def _collapse(value: str) -> str:
    # str.split() splits on every Unicode whitespace (NBSP, ideographic space, line separators...).
    return " ".join(unicodedata.normalize("NFC", value).split())


def plain_text(value: str, *, max_length: int) -> str:
    """Text with all markup removed; safe to show as text and inert as HTML. See the module doc."""
    _check_raw(value, max_length)
    text = _collapse(value)
    for _ in range(MAX_DECODE_PASSES):
        decoded = _collapse(html.unescape(_PLAIN.clean(text)))
        if decoded == text:
            break
        text = decoded
    else:
        raise ValueError("contains markup or character references nested too deeply")
    # Characters that only appear once references are decoded (e.g. "&#x7;", "&#x202E;").
    _reject_forbidden_characters(text)
    if _MARKUP_START.search(text):  # unreachable at the fixed point; belt and braces
        raise ValueError("contains markup that cannot be reduced to text")
    _check_length(text, max_length)
    return text


def rich_text(value: str, *, max_length: int) -> str:
    """Sanitized HTML restricted to the rich-text allowlist. See the module doc."""
    _check_raw(value, max_length)
    out = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    for _ in range(MAX_DECODE_PASSES):
        cleaned = unicodedata.normalize("NFC", _RICH.clean(out)).strip()
        if cleaned == out:
            break
        out = cleaned
    else:
        raise ValueError("contains markup that does not sanitize to a stable form")
    _reject_forbidden_characters(out)
    _check_length(out, max_length)
    return out
