"""The cost of matching URI-template selectors: the hub's matcher (RE2) against Python's
``re`` on the same expressions, in one run.

Each case is a template a security review used to freeze a node, matched against the
longest topic the hub accepts (256 bytes). Python's ``re``, whose time grows
exponentially with the topic's length on some of them, is timed on topics one
character longer at a time, up to the first that takes over ``--re-budget`` seconds.

    .venv/bin/python bench/templates.py
"""

from __future__ import annotations

import argparse
import platform
import re
import time

from hub.doors import topics
from hub.doors.topics import MAX_TEMPLATE_VARIABLES, compile_template
from hub.store.keys import MAX_CHANNEL_BYTES

LONGEST = MAX_CHANNEL_BYTES
VARS = MAX_TEMPLATE_VARIABLES

#: name: (template, topic of a given length that does not match)
CASES = {
    "{id} against commas": (
        "https://example.com/books/{id}",
        lambda n: "https://example.com/books/" + "," * max(0, n - 27) + "!",
    ),
    f"{VARS} adjacent {{+a}}": (
        "".join(f"{{+a{i}}}" for i in range(VARS)) + "X",
        lambda n: "a" * (n - 1) + "Y",
    ),
    f"{{v0,...}} with {VARS} variables": (
        "{" + ",".join(f"v{i}" for i in range(VARS)) + "}",
        lambda n: "," * (n - 1) + "!",
    ),
    f"{VARS} adjacent {{;a}}": (
        "".join(f"{{;a{i}}}" for i in range(VARS)),
        lambda n: ";a1" * (n // 3) + "!",
    ),
}


def _worst(match: object, topic: str, repeat: int) -> float:
    worst = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        match(topic)  # type: ignore[operator]
        worst = max(worst, time.perf_counter() - started)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="matches per RE2 figure")
    parser.add_argument("--re-budget", type=float, default=0.5, help="seconds per re match")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}; topic {LONGEST} bytes"
    )
    print(f"{'case':32} {'RE2 compile':>12} {'RE2 worst':>10} | Python re, same expression")
    for name, (template, topic_of) in CASES.items():
        topics._cache.clear()
        started = time.perf_counter()
        compiled = compile_template(template)
        compile_ms = (time.perf_counter() - started) * 1000
        worst_us = _worst(compiled.fullmatch, topic_of(LONGEST), args.repeat) * 1e6
        # The same (compact) expression on Python's backtracking engine.
        backtracking = re.compile(topics._translate(template).replace("\\x{", "\\x"), re.DOTALL)
        # One character longer at a time: for the worst cases each one doubles the time.
        length, took = 8, 0.0
        while length < LONGEST and took <= args.re_budget:
            length += 1
            took = _worst(backtracking.fullmatch, topic_of(length), 1)
        growth = f"{took * 1000:.1f} ms at {length} bytes"
        print(f"{name:32} {compile_ms:9.2f} ms {worst_us:7.1f} us | {growth}")
    hot_path(args.repeat * 500)


def hot_path(repeat: int) -> None:
    """Per event, per template subscriber: one selector against a topic that recurs, as
    the live path matches it, beside Python's re on the same expression."""
    template, topic = "https://example.com/books/{id}", "https://example.com/books/12345"
    selectors = topics.Selectors([template])
    compiled = compile_template(template)
    backtracking = re.compile(topics._translate(template), re.DOTALL)
    timings = {}
    for name, call in (
        ("Selectors.match", lambda: selectors.match(topic)),
        ("RE2 fullmatch", lambda: compiled.fullmatch(topic)),
        ("Python re fullmatch", lambda: backtracking.fullmatch(topic)),
    ):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        timings[name] = (time.perf_counter() - started) / repeat * 1e6
    base = timings["Python re fullmatch"]
    print("hot path, a recurring 31-byte topic:")
    for name, us in timings.items():
        print(f"  {name:22} {us:6.2f} us per match ({us / base:.2f}x Python re)")


if __name__ == "__main__":
    main()
