"""Mercure topic selectors: ``*``, an exact topic, or an RFC 6570 URI template that a
topic must *match* (be a possible expansion of).

No maintained Python library matches URI templates (``uritemplate`` and
``uri-template`` only expand), so templates are compiled here into regular
expressions, one per template, cached. The matcher accepts every string some
assignment of the variables expands to, per operator (RFC 6570 section 3.2): it is
deliberately a little generous (``{id:3}`` is not held to three characters of a
percent-encoded value, lists and maps match alike), never stricter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .errors import BadRequest

__all__ = ["Selectors", "compile_template", "is_template", "matches"]

_UNRESERVED = r"[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}"
_RESERVED = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}"
_VARNAME = re.compile(r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*")
_VARSPEC = re.compile(rf"({_VARNAME.pattern})(?::([1-9][0-9]{{0,3}})|(\*))?")

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


def is_template(selector: str) -> bool:
    return "{" in selector


@functools.lru_cache(maxsize=4096)
def compile_template(template: str) -> re.Pattern[str]:
    """The regular expression matching every expansion of ``template``.

    Raises :class:`BadRequest` for a malformed template (unbalanced braces, bad
    variable names, unknown operators).
    """
    out: list[str] = []
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        close = template.find("}", pos)
        if start < 0:
            if close >= 0:
                raise BadRequest(f"URI template {template[:80]!r} has a '}}' without '{{'")
            out.append(re.escape(template[pos:]))
            break
        if 0 <= close < start:
            raise BadRequest(f"URI template {template[:80]!r} has a '}}' without '{{'")
        end = template.find("}", start)
        if end < 0:
            raise BadRequest(f"URI template {template[:80]!r} has a '{{' that is never closed")
        out.append(re.escape(template[pos:start]))
        out.append(_expression(template, template[start + 1 : end]))
        pos = end + 1
    return re.compile("".join(out), re.DOTALL)


def _expression(template: str, body: str) -> str:
    op = body[:1] if body[:1] in _OPERATORS and body[:1] != "" else ""
    if body[:1] in "=,!@|":
        raise BadRequest(f"URI template {template[:80]!r}: operator {body[:1]!r} is reserved")
    first, sep, named, reserved = _OPERATORS[op]
    specs = body[len(op) :].split(",")
    chars = _RESERVED if reserved else _UNRESERVED
    items: list[str] = []
    for spec in specs:
        match = _VARSPEC.fullmatch(spec)
        if match is None:
            raise BadRequest(
                f"URI template {template[:80]!r}: {spec!r} is not a variable name "
                "(letters, digits, _ and %XX, with an optional :length or *)"
            )
        name, prefix, explode = match.groups()
        length = f"{{0,{prefix}}}" if prefix else "*"
        # A list value is comma-joined unless exploded; an exploded map gives k=v pairs.
        value = f"(?:{chars}|,)*" if not prefix else f"(?:{chars}){length}"
        if named:
            key = r"(?:[A-Za-z0-9_.~\-]|%[0-9A-Fa-f]{2})+" if explode else re.escape(name)
            item = f"{key}(?:={value})?" if op == ";" else f"{key}={value}"
        elif explode:
            item = f"(?:(?:[A-Za-z0-9_.~\\-]|%[0-9A-Fa-f]{{2}})+=)?{value}"
        else:
            item = value
        items.append(item)
    # Any variable may be undefined (and is then left out, separator included), so the
    # expression is a separator-joined run of items, or nothing at all.
    one = "|".join(f"(?:{i})" for i in items)
    return f"(?:{re.escape(first)}(?:{one})(?:{re.escape(sep)}(?:{one}))*)?"


def matches(topic: str, selector: str) -> bool:
    """True if ``topic`` is selected by ``selector``; a malformed template selects nothing."""
    if selector == "*" or selector == topic:
        return True
    if not is_template(selector):
        return False
    try:
        return compile_template(selector).fullmatch(topic) is not None
    except BadRequest:
        return False


class Selectors:
    """A set of topic selectors, split for cheap matching: exact topics in a set, the
    templates compiled once, ``*`` as a flag."""

    __slots__ = ("all", "exact", "templates")

    def __init__(self, selectors: Iterable[str], *, strict: bool = False) -> None:
        self.all = False
        self.exact: set[str] = set()
        self.templates: list[re.Pattern[str]] = []
        for selector in selectors:
            if selector == "*":
                self.all = True
            elif is_template(selector):
                try:
                    self.templates.append(compile_template(selector))
                except BadRequest:
                    if strict:
                        raise
            else:
                self.exact.add(selector)

    @property
    def empty(self) -> bool:
        return not self.all and not self.exact and not self.templates

    @property
    def patterns(self) -> bool:
        """True if some selector is not an exact topic (``*`` or a template)."""
        return self.all or bool(self.templates)

    def match(self, topic: str) -> bool:
        if self.all or topic in self.exact:
            return True
        return any(t.fullmatch(topic) is not None for t in self.templates)

    def match_any(self, topics: Iterable[str]) -> bool:
        return any(self.match(t) for t in topics)

    def match_all(self, topics: Iterable[str]) -> bool:
        return all(self.match(t) for t in topics)
