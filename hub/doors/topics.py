"""Mercure topic selectors: ``*``, an exact topic, or an RFC 6570 URI template that a
topic must *match* (be a possible expansion of).

No maintained Python library matches URI templates (``uritemplate`` and
``uri-template`` only expand), so templates are compiled here into regular
expressions, one per template, cached. The matcher accepts every string some
assignment of the variables expands to, per operator (RFC 6570 section 3.2): it is
deliberately a little generous (``{id:3}`` is not held to three characters of a
percent-encoded value, lists and maps match alike), never stricter.

Templates and topics come from clients, so matching must not be a way to stall the
node. The expressions run on RE2 (``google-re2``), an automaton that never backtracks:
a match takes time linear in the topic's length whatever the template, where Python's
``re`` took seconds on ``{id}`` against a run of commas and hours on a few adjacent
variables. A template is also bounded (:data:`MAX_TEMPLATE_BYTES`,
:data:`MAX_TEMPLATE_VARIABLES`), compiled small (identical alternatives and repeated
star-closed expressions are folded), and the cache of compiled templates is bounded by
their size, not only their number. RE2's Python binding costs ~4 us a call, so recent
results are remembered per (template, topic), within a bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import re2

from hub.doors import urlpatterns as url_patterns
from hub.errors import BadRequest

__all__ = [
    "MAX_TEMPLATE_BYTES",
    "MAX_TEMPLATE_VARIABLES",
    "Selectors",
    "check_template",
    "compile_template",
    "is_template",
    "matches",
]

#: Longest URI template accepted, in UTF-8 bytes.
MAX_TEMPLATE_BYTES = 1024
#: Most variables one URI template may hold (``{a,b}`` counts two).
MAX_TEMPLATE_VARIABLES = 32
#: RE2's memory budget for one compiled template (program and automaton cache): a
#: template that needs more is refused as too complex.
_PATTERN_MEMORY = 1 << 20
#: The compiled-template cache holds at most this many templates...
_CACHE_ENTRIES = 1024
#: ...and at most this many RE2 instructions in all (about 16 bytes each, plus the
#: automata RE2 builds as it matches, each within ``_PATTERN_MEMORY``).
_CACHE_INSTRUCTIONS = 1 << 20

_PCT = "%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-._~"
_RESERVED = r"A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;="
_KEY = rf"(?:[A-Za-z0-9_.~\-]|{_PCT})+"
_VARSPEC = re2.compile(
    r"((?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*)"
    r"(?::([1-9][0-9]{0,3})|(\*))?"
)

#: operator: (first, separator, named, allow reserved)
_OPERATORS: dict[str, tuple[str, str, bool, bool]] = {
    "": ("", ",", False, False),
    "+": ("", ",", False, True),
    "#": ("#", ",", False, True),
    ".": (".", ".", False, False),
    "/": ("/", "/", False, False),
    ";": (";", ";", True, False),
    "?": ("?", "&", True, False),
    "&": ("&", "&", True, False),
}


def _options() -> Any:
    options = re2.Options()
    options.max_mem = _PATTERN_MEMORY
    options.never_capture = True
    options.log_errors = False
    return options


_OPTIONS = _options()
_cache: OrderedDict[str, Any] = OrderedDict()
_cached_instructions = 0
#: Recent results by (template, topic). A node's template subscribers see the same
#: few topics event after event, and a call into RE2's Python binding costs ~5 us
#: where this lookup costs 0.1. Keyed by the template's text (at most
#: MAX_TEMPLATE_BYTES), so a full memo holds a few MiB at most; it is emptied when full.
_MATCHES_KEPT = 1 << 14
_matched: dict[tuple[str, str], bool] = {}


def is_template(selector: str) -> bool:
    return "{" in selector


def check_template(template: str) -> None:
    """Raise :class:`BadRequest` unless ``template`` is within the size limits (cheap: call
    it before compiling anything a client sent)."""
    if len(template.encode("utf-8", "replace")) > MAX_TEMPLATE_BYTES:
        raise BadRequest(
            f"URI template {template[:40]!r}... is longer than {MAX_TEMPLATE_BYTES} bytes; "
            "use a shorter template"
        )
    expressions = template.split("{")[1:]
    if sum(e.split("}", 1)[0].count(",") + 1 for e in expressions) > MAX_TEMPLATE_VARIABLES:
        raise BadRequest(
            f"URI template {template[:40]!r}... has more than {MAX_TEMPLATE_VARIABLES} "
            "variables; use fewer"
        )


def compile_template(template: str) -> Any:
    """The compiled RE2 expression matching every expansion of ``template``.

    Raises :class:`BadRequest` for a template over the limits or malformed (unbalanced
    braces, bad variable names, unknown operators). Compiled templates are cached.
    """
    global _cached_instructions
    found = _cache.get(template)
    if found is not None:
        _cache.move_to_end(template)
        return found
    check_template(template)
    try:
        compiled = re2.compile(_translate(template), _OPTIONS)
    except re2.error as exc:
        raise BadRequest(
            f"URI template {template[:80]!r} is too complex to match ({exc}); simplify it"
        ) from None
    size = compiled.programsize + compiled.reverseprogramsize
    _cache[template] = compiled
    _cached_instructions += size
    while len(_cache) > _CACHE_ENTRIES or (
        _cached_instructions > _CACHE_INSTRUCTIONS and len(_cache) > 1
    ):
        _, old = _cache.popitem(last=False)
        _cached_instructions -= old.programsize + old.reverseprogramsize
    return compiled


def _match(template: str, compiled: Any, topic: str) -> bool:
    """Does ``topic`` match ``template``, compiled as ``compiled``?"""
    key = (template, topic)
    found = _matched.get(key)
    if found is None:
        if len(_matched) >= _MATCHES_KEPT:
            _matched.clear()
        found = _matched[key] = compiled.fullmatch(topic) is not None
    return found


def _translate(template: str) -> str:
    out: list[str] = []
    previous: str | None = None
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        close = template.find("}", pos)
        if start < 0:
            if close >= 0:
                raise BadRequest(f"URI template {template[:80]!r} has a '}}' without '{{'")
            out.append(_escape(template[pos:]))
            break
        if 0 <= close < start:
            raise BadRequest(f"URI template {template[:80]!r} has a '}}' without '{{'")
        end = template.find("}", start)
        if end < 0:
            raise BadRequest(f"URI template {template[:80]!r} has a '{{' that is never closed")
        if start > pos:
            out.append(_escape(template[pos:start]))
            previous = None
        expression, idempotent = _expression(template, template[start + 1 : end])
        # {+a}{+b} matches what {+a} matches: the same star-closed expression twice in a
        # row adds nothing but work for the automaton.
        if not (idempotent and expression == previous):
            out.append(expression)
        previous = expression if idempotent else None
        pos = end + 1
    return "".join(out)


def _escape(literal: str) -> str:
    # RE2 takes any ASCII punctuation escaped, and other characters as themselves.
    out = []
    for char in literal:
        if not char.isprintable():
            out.append(f"\\x{{{ord(char):x}}}")
        elif char.isascii() and not char.isalnum():
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _expression(template: str, body: str) -> tuple[str, bool]:
    """One ``{...}`` as a regular expression, and whether it is idempotent (the
    expression twice in a row matches exactly what it matches once)."""
    if body[:1] in "=,!@|":
        raise BadRequest(f"URI template {template[:80]!r}: operator {body[:1]!r} is reserved")
    op = body[:1] if body[:1] in _OPERATORS and body[:1] != "" else ""
    first, sep, named, reserved = _OPERATORS[op]
    chars = _RESERVED if reserved else _UNRESERVED
    unit = f"[{chars}]|{_PCT}"
    items: dict[str, None] = {}
    plain = True
    for spec in body[len(op) :].split(","):
        match = _VARSPEC.fullmatch(spec)
        if match is None:
            raise BadRequest(
                f"URI template {template[:80]!r}: {spec[:40]!r} is not a variable name "
                "(letters, digits, _ and %XX, with an optional :length or *)"
            )
        name, prefix, explode = match.group(1), match.group(2), match.group(3)
        # A list value is comma-joined unless exploded; an exploded map gives k=v pairs.
        value = f"(?:{unit}|,)*" if not prefix else f"(?:{unit}){{0,{prefix}}}"
        if named:
            key = _KEY if explode else _escape(name)
            item = f"{key}(?:={value})?" if op == ";" else f"{key}={value}"
            plain = False
        elif explode:
            item = f"(?:{_KEY}=)?{value}"
            plain = plain and reserved  # with '=' among the value's characters: the same
        else:
            item = value
            plain = plain and not prefix
        items[item] = None
    # Any variable may be undefined (and is then left out, separator included), so the
    # expression is a separator-joined run of items, or nothing at all.
    one = "|".join(items) if len(items) == 1 else "|".join(f"(?:{i})" for i in items)
    expression = f"(?:{_escape(first)}(?:{one})(?:{_escape(sep)}(?:{one}))*)?"
    # Unnamed, every item the unbounded value: the separator (and the first character,
    # where there is one) can be read as part of a run, so the language is star-closed.
    return expression, plain and not named


def matches(topic: str, selector: str) -> bool:
    """True if ``topic`` is selected by ``selector``; a malformed template selects nothing."""
    if selector == "*" or selector == topic:
        return True
    if not is_template(selector):
        return False
    try:
        return _match(selector, compile_template(selector), topic)
    except BadRequest:
        return False


class Selectors:
    """A set of topic selectors, split for cheap matching: exact topics in a set, the
    templates and URL Patterns compiled once, ``*`` as a flag.

    ``selectors`` are Mercure 0.24 selectors: ``*``, a URI template (with braces) or
    an exact topic. ``exact=True`` takes every one of them as an exact name (the native
    API's channels), braces and all. ``urlpatterns`` are Mercure 1.0 URL Patterns
    (``match_urlpattern=``); a 1.0 exact selector (``match=``) is given in ``selectors``
    with ``exact=True``, or in ``matches`` beside others, where ``*`` means every topic.
    """

    __slots__ = ("all", "exact", "templates", "urlpatterns")

    def __init__(
        self,
        selectors: Iterable[str] = (),
        *,
        strict: bool = False,
        exact: bool = False,
        matches: Iterable[str] = (),
        urlpatterns: Iterable[str] = (),
    ) -> None:
        self.all = False
        self.exact: set[str] = set()
        #: Templates that compiled: (text, compiled); held here, so that the cache
        #: evicting one never makes a subscriber's match compile it again.
        self.templates: list[tuple[str, Any]] = []
        #: URL Patterns that compiled, likewise.
        self.urlpatterns: list[tuple[str, url_patterns.URLPattern]] = []
        for selector in selectors:
            if exact:
                self.exact.add(selector)
            elif selector == "*":
                self.all = True
            elif is_template(selector):
                try:
                    compiled = compile_template(selector)
                except BadRequest:
                    if strict:
                        raise
                else:
                    self.templates.append((selector, compiled))
            else:
                self.exact.add(selector)
        for selector in matches:
            if selector == "*":
                self.all = True
            else:
                self.exact.add(selector)
        for pattern in urlpatterns:
            try:
                self.urlpatterns.append((pattern, url_patterns.compile_pattern(pattern)))
            except BadRequest:
                if strict:
                    raise

    @property
    def empty(self) -> bool:
        return not self.all and not self.exact and not self.templates and not self.urlpatterns

    @property
    def patterns(self) -> bool:
        """True if some selector is not an exact topic (``*``, a template or a URL
        Pattern): such a stream needs every topic's updates to choose from."""
        return self.all or bool(self.templates) or bool(self.urlpatterns)

    def match(self, topic: str) -> bool:
        if self.all or topic in self.exact:
            return True
        # A loop, not any(...): the generator was 0.8 of 1 us per call, and this runs per
        # event for every template subscriber.
        for text, compiled in self.templates:
            if _match(text, compiled, topic):
                return True
        for text, pattern in self.urlpatterns:  # noqa: SIM110
            if url_patterns.match(text, pattern, topic):
                return True
        return False

    def match_any(self, topics: Iterable[str]) -> bool:
        return any(self.match(t) for t in topics)

    def match_all(self, topics: Iterable[str]) -> bool:
        return all(self.match(t) for t in topics)
