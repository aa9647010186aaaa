"""URL Pattern selectors (Mercure 1.0's match_urlpattern=) cannot be made to backtrack
or to compile for long: the engine refuses what only a backtracking engine can do, a
client's pattern may hold no regular expression group and only so many names and
wildcards, the pathological patterns within those bounds answer correctly against the
longest topic, and compiled patterns and results stay bounded. No timing here: the
guarantees are structural (Rust's regex crate is a finite automaton; the figures are
in hub/doors/urlpatterns.py's docstring)."""

from __future__ import annotations

import pytest
from urlpattern import URLPattern

from hub.doors import urlpatterns
from hub.doors.topics import Selectors
from hub.doors.urlpatterns import MAX_PATTERN_BYTES, MAX_PATTERN_PARTS, compile_pattern
from hub.errors import BadRequest
from hub.store.keys import MAX_CHANNEL_BYTES

HOST = "https://example.net"
N = MAX_PATTERN_PARTS

#: (pattern, topic): within the limits, each made to nearly match its topic, which is
#: as long as a topic may be and fails at its very end.
PATHOLOGICAL = {
    "wildcards in a row": (f"{HOST}/" + "*a" * (N // 2) + "b", "a" * 200 + "c"),
    "optional segments": ("".join(f"/:p{i}?" for i in range(N)) + "/end", "/a" * 100 + "/x"),
    "one-or-more segments": ("".join(f"/:p{i}+" for i in range(N)) + "/end", "/a" * 100 + "/x"),
    "adjacent repeated names": ("/" + "".join(f"{{:p{i}}}+" for i in range(N)) + "!", "a" * 200),
    "wildcard groups": ("/" + "{a*}*" * (N // 2) + "b", "a" * 200 + "c"),
}


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def test_pathological_pattern_against_the_longest_topic_answers_correctly(case: str) -> None:
    path_pattern, path = PATHOLOGICAL[case]
    pattern = path_pattern if path_pattern.startswith("https") else HOST + path_pattern
    topic = (HOST + path)[:MAX_CHANNEL_BYTES]
    assert len(topic.encode()) <= MAX_CHANNEL_BYTES
    compiled = compile_pattern(pattern)
    assert not compiled.hasRegExpGroups
    assert urlpatterns.match(pattern, compiled, topic) is False


@pytest.mark.parametrize(
    "backtracking_only",
    [r"(?=a)a", r"(?<=a)b", r"(a)\1", r"(?!b)a"],
)
def test_the_engine_is_an_automaton_it_refuses_backtracking_only_constructs(
    backtracking_only: str,
) -> None:
    # Held against the library itself, so that an upgrade onto a backtracking engine
    # (one that would take these) fails here.
    with pytest.raises(ValueError, match=r"regexp|regex|invalid"):
        URLPattern(f"{HOST}/:a({backtracking_only})")


@pytest.mark.parametrize(
    "pattern",
    [
        f"{HOST}/:a((?:a+)+)b",  # nested quantifiers: exponential on a backtracking engine
        f"{HOST}/:a(\\w{{1000}})",  # half a second to compile, measured
        f"{HOST}/:a(.*)",
        f"{HOST}/(a|b)",
    ],
)
def test_regular_expression_groups_from_clients_are_refused_before_compiling(
    pattern: str,
) -> None:
    with pytest.raises(BadRequest, match="regular expression group"):
        compile_pattern(pattern)
    assert pattern not in urlpatterns._cache
    assert not Selectors(urlpatterns=[pattern]).match(f"{HOST}/a")


def test_pattern_limits_name_the_limit() -> None:
    with pytest.raises(BadRequest, match=f"longer than {MAX_PATTERN_BYTES} bytes"):
        compile_pattern(f"{HOST}/" + "a" * MAX_PATTERN_BYTES)
    with pytest.raises(BadRequest, match=f"more than {MAX_PATTERN_PARTS} names"):
        compile_pattern(HOST + "".join(f"/:p{i}" for i in range(N + 1)))
    with pytest.raises(BadRequest, match="absolute URL pattern"):
        compile_pattern("/books/:id")
    # Escaped parentheses are literal text, a port is not a name.
    assert compile_pattern(f"{HOST}:8443/\\(draft\\)/:id").test(f"{HOST}:8443/(draft)/1")


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        (f"{HOST}/foo/:id", f"{HOST}/foo/abc", True),
        (f"{HOST}/foo/:id", f"{HOST}/foo/a/b", False),  # a name is one segment
        (f"{HOST}/foo/*", f"{HOST}/foo/a/b", True),
        (f"{HOST}/foo/:id", "https://EXAMPLE.net/foo/1", True),  # hosts are canonical
        (f"{HOST}/bar/:var", f"{HOST}/foo/will-not-match", False),
        (f"{HOST}/books{{/:id}}?", f"{HOST}/books", True),
        (f"{HOST}/books{{/:id}}?", f"{HOST}/books/1", True),
        ("https://*.example.net/*", "https://api.example.net/x", True),
        (f"{HOST}/*", "not-a-url", False),  # a topic that is no URL matches none
    ],
)
def test_url_patterns_match_as_whatwg_says(pattern: str, topic: str, expected: bool) -> None:
    assert Selectors(urlpatterns=[pattern]).match(topic) is expected


def test_compiled_patterns_and_results_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urlpatterns, "_CACHE_ENTRIES", 16)
    monkeypatch.setattr(urlpatterns, "_MATCHES_KEPT", 50)
    urlpatterns._matched.clear()
    for i in range(40):
        compile_pattern(f"{HOST}/count/{i}/:id")
    assert len(urlpatterns._cache) == 16
    selectors = Selectors(urlpatterns=[f"{HOST}/books/:id"])
    for i in range(120):
        assert selectors.match(f"{HOST}/books/{i}")
        assert not selectors.match(f"{HOST}/books/{i}/x")
        assert len(urlpatterns._matched) <= 50
    # Remembered answers are the matcher's own.
    assert urlpatterns._matched[(f"{HOST}/books/:id", f"{HOST}/books/119")] is True
    assert selectors.match(f"{HOST}/books/119")
