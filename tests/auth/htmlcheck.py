"""What a browser would build from a stored value: parse with html5lib (an HTML5 parser) and list
every way the result could run script or exfiltrate. Used by the XSS corpus and the property tests."""

from __future__ import annotations

import html
import re

import html5lib

FORBIDDEN_ELEMENTS = frozenset(
    {
        "script",
        "iframe",
        "object",
        "embed",
        "style",
        "svg",
        "math",
        "form",
        "base",
        "meta",
        "link",
        # beyond the list: anything else that loads, frames or submits
        "frame",
        "frameset",
        "applet",
        "img",
        "image",
        "video",
        "audio",
        "source",
        "input",
        "button",
        "textarea",
        "select",
        "template",
        "noscript",
        "portal",
        "isindex",
        "keygen",
        "xmp",
        "plaintext",
        "title",
    }
)
ALLOWED_SCHEMES = frozenset({"http", "https", "mailto"})
URL_ATTRIBUTES = frozenset(
    {
        "href",
        "src",
        "action",
        "formaction",
        "data",
        "xlink:href",
        "background",
        "poster",
        "codebase",
        "cite",
        "dynsrc",
        "lowsrc",
        "longdesc",
        "usemap",
        "classid",
        "archive",
        "profile",
        "manifest",
        "icon",
        "ping",
        "srcset",
        "srcdoc",
        "to",
        "values",
        "from",
        "by",
        "content",
    }
)
RICH_TEXT_ALLOWED = {
    "p": set(),
    "br": set(),
    "b": set(),
    "i": set(),
    "em": set(),
    "strong": set(),
    "code": set(),
    "ul": set(),
    "ol": set(),
    "li": set(),
    "a": {"href", "rel"},
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].lower()


def browser_url(value: str) -> str:
    """A URL attribute value as a browser's URL parser sees it (the HTML parser already decoded
    character references): leading/trailing C0 controls and spaces stripped, tab/CR/LF removed anywhere.
    Entities are decoded once more, in case a value was stored double-encoded."""
    value = html.unescape(value)
    value = value.strip(_C0_OR_SPACE)
    return re.sub(r"[\t\n\r]", "", value)


def url_scheme(value: str) -> str | None:
    m = _SCHEME.match(browser_url(value))
    return m.group(1).lower() if m else None


def parse(value: str):
    return html5lib.parseFragment(value, treebuilder="etree", namespaceHTMLElements=False)


def elements(value: str) -> list:
    return list(parse(value).iter())[1:]  # skip the DOCUMENT_FRAGMENT root


def problems(value: str, *, plain: bool) -> list[str]:
    """Everything wrong with ``value`` as stored HTML; empty when it is safe."""
    found: list[str] = []
    nodes = elements(value)
    if plain and nodes:
        found.append(
            f"plain text parses to nodes: {[_local(n.tag) if isinstance(n.tag, str) else 'comment' for n in nodes]}"
        )
    for node in nodes:
        if not isinstance(node.tag, str):  # comments, processing instructions
            found.append("comment or processing instruction survived")
            continue
        tag = _local(node.tag)
        if tag in FORBIDDEN_ELEMENTS:
            found.append(f"forbidden element <{tag}>")
        if not plain and tag not in RICH_TEXT_ALLOWED:
            found.append(f"element outside the rich-text allowlist <{tag}>")
        for raw_name, attr_value in node.attrib.items():
            name = _local(raw_name)
            if name.startswith("on"):
                found.append(f"event-handler attribute {name} on <{tag}>")
            if name == "style":
                found.append(f"style attribute on <{tag}>")
            if name in URL_ATTRIBUTES or raw_name.endswith("}href"):
                scheme = url_scheme(attr_value)
                if scheme is None and name == "href" and tag == "a":
                    found.append(f"relative or scheme-less link {attr_value!r}")
                elif scheme is not None and scheme not in ALLOWED_SCHEMES:
                    found.append(f"URL attribute {name}={attr_value!r} has scheme {scheme!r}")
            if not plain and tag in RICH_TEXT_ALLOWED and name not in RICH_TEXT_ALLOWED[tag]:
                found.append(f"attribute outside the allowlist: <{tag} {name}>")
        if tag == "a" and not plain:
            rel = set((node.attrib.get("rel") or "").split())
            if not {"noopener", "noreferrer", "nofollow"} <= rel:
                found.append(f"link without rel=noopener noreferrer nofollow: {node.attrib!r}")
    return found
