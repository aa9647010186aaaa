"""Mercure 1.0 topic selectors written as WHATWG URL Patterns
(``https://example.net/books/:id``, ``https://example.net/*``).

Matching is done by ``urlpattern``, a thin binding of the URL Pattern implementation
Deno ships (denoland/rust-urlpattern). It compiles each component of a pattern to a
regular expression for Rust's ``regex`` crate, a finite-automaton engine that never
backtracks: a match takes time linear in the topic's length whatever the pattern, and
a pattern needing what only a backtracking engine can do (look-around, back-references)
does not compile, so it is refused.

Linear is not the whole story: building the automaton costs too. One custom regular
expression group such as ``:a(\\w{1000})`` took half a second to compile (and be found
too large) here, so a pattern from a client may not hold any ``(...)`` group: names
(``:id``), wildcards (``*``), ``{...}`` groups and their modifiers are what it may use,
at most :data:`MAX_PATTERN_PARTS` of them, in at most :data:`MAX_PATTERN_BYTES`; such a
pattern compiles in under 2 ms, as a URI template does, and matches a topic (at most
256 bytes) well under one. Compiled patterns are cached within a bound, and recent
results are remembered per (pattern, topic) within a bound, like URI templates
(:mod:`hub.doors.topics`).

A pattern must be an absolute URL pattern; a topic that is not a URL matches none.
"""

from __future__ import annotations

from collections import OrderedDict

from urlpattern import URLPattern

from hub.errors import BadRequest

__all__ = [
    "MAX_PATTERN_BYTES",
    "MAX_PATTERN_PARTS",
    "URLPattern",
    "check_pattern",
    "compile_pattern",
    "match",
]

#: Longest URL Pattern accepted, in UTF-8 bytes (as for URI templates).
MAX_PATTERN_BYTES = 1024
#: Most names (``:id``) and ``*`` (wildcards and modifiers alike) one pattern may hold,
#: as :data:`hub.doors.topics.MAX_TEMPLATE_VARIABLES` for templates.
MAX_PATTERN_PARTS = 32
_CACHE_ENTRIES = 1024
_MATCHES_KEPT = 1 << 14

_cache: OrderedDict[str, URLPattern] = OrderedDict()
_matched: dict[tuple[str, str], bool] = {}


def check_pattern(pattern: str) -> None:
    """Raise :class:`BadRequest` unless ``pattern`` is within the limits and holds no
    regular expression group (cheap: call it before compiling anything a client sent)."""
    if len(pattern.encode("utf-8", "replace")) > MAX_PATTERN_BYTES:
        raise BadRequest(
            f"URL pattern {pattern[:40]!r}... is longer than {MAX_PATTERN_BYTES} bytes; "
            "use a shorter pattern"
        )
    parts = 0
    escaped = False
    for position, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            raise BadRequest(
                f"URL pattern {pattern[:80]!r} holds a regular expression group '(...)', "
                "which this hub does not take from clients; use :name, * and {...} groups"
            )
        elif char == "*" or (char == ":" and _starts_name(pattern[position + 1 : position + 2])):
            parts += 1
    if parts > MAX_PATTERN_PARTS:
        raise BadRequest(
            f"URL pattern {pattern[:40]!r}... has more than {MAX_PATTERN_PARTS} names and "
            "wildcards; use fewer"
        )


def _starts_name(char: str) -> bool:
    # A name starts with a letter, _ or $ (":8080" is a port, "https:" a scheme).
    return char.isalpha() or char in ("_", "$")


def compile_pattern(pattern: str) -> URLPattern:
    """The compiled URL Pattern; :class:`BadRequest` if it is too long, relative,
    malformed, or needs a backtracking regular expression. Cached."""
    found = _cache.get(pattern)
    if found is not None:
        _cache.move_to_end(pattern)
        return found
    check_pattern(pattern)
    try:
        compiled = URLPattern(pattern)
    except (ValueError, TypeError) as exc:
        raise BadRequest(
            f"URL pattern {pattern[:80]!r} cannot be used ({exc}); give an absolute URL "
            "pattern such as https://example.com/books/:id (look-around and "
            "back-references are not supported)"
        ) from None
    _cache[pattern] = compiled
    while len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return compiled


def match(pattern: str, compiled: URLPattern, topic: str) -> bool:
    """Does ``topic`` match ``pattern``, compiled as ``compiled``?"""
    key = (pattern, topic)
    found = _matched.get(key)
    if found is None:
        if len(_matched) >= _MATCHES_KEPT:
            _matched.clear()
        try:
            found = bool(compiled.test(topic))
        except (ValueError, TypeError):
            found = False  # not a URL: no URL pattern selects it
        _matched[key] = found
    return found
