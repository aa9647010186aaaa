"""Mercure 1.0 topic selectors written as WHATWG URL Patterns
(``https://example.net/books/:id``, ``https://example.net/*``).

Matching is done by ``urlpattern``, a thin binding of the URL Pattern implementation
Deno ships (denoland/rust-urlpattern). It compiles each component of a pattern to a
regular expression for Rust's ``regex`` crate, a finite-automaton engine that never
backtracks: a match takes time linear in the topic's length whatever the pattern, and
a pattern needing what only a backtracking engine can do (look-around, back-references)
does not compile, so it is refused. Patterns come from clients, so they are also
bounded in size (:data:`MAX_PATTERN_BYTES`), the compiled ones are cached within a
bound, and recent results are remembered per (pattern, topic) within a bound, like
URI templates (:mod:`hub.doors.topics`).

A pattern must be an absolute URL pattern; a topic that is not a URL matches none.
"""

from __future__ import annotations

from collections import OrderedDict

from urlpattern import URLPattern

from hub.errors import BadRequest

__all__ = ["MAX_PATTERN_BYTES", "URLPattern", "check_pattern", "compile_pattern", "match"]

#: Longest URL Pattern accepted, in UTF-8 bytes (as for URI templates).
MAX_PATTERN_BYTES = 1024
_CACHE_ENTRIES = 1024
_MATCHES_KEPT = 1 << 14

_cache: OrderedDict[str, URLPattern] = OrderedDict()
_matched: dict[tuple[str, str], bool] = {}


def check_pattern(pattern: str) -> None:
    """Raise :class:`BadRequest` unless ``pattern`` is within the size limit (cheap: call
    it before compiling anything a client sent)."""
    if len(pattern.encode("utf-8", "replace")) > MAX_PATTERN_BYTES:
        raise BadRequest(
            f"URL pattern {pattern[:40]!r}... is longer than {MAX_PATTERN_BYTES} bytes; "
            "use a shorter pattern"
        )


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
