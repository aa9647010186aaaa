"""Split a stream of text into sentences as they complete: pure, incremental, no I/O.

>>> splitter = SentenceSplitter()
>>> splitter.feed("Pi is about 3.")
[]
>>> splitter.feed("14. It never ends")
['Pi is about 3.14.']
>>> splitter.flush()
['It never ends']

A sentence ends at ``.``, ``!``, ``?`` or ``…`` (runs such as ``?!`` or ``...`` count
as one) followed by whitespace, with any closing quotes and brackets right after the
punctuation kept with it. These do not end a sentence:

- punctuation followed by something other than whitespace: ``3.14``, ``1.5x``,
  ``example.com``;
- punctuation whose next word starts with a lowercase letter: ``etc. and``,
  ``Wait... what``, ``5 p.m. tomorrow`` (models start sentences with a capital);
- a period after a title or a Latin abbreviation (``Mr.``, ``Dr.``, ``e.g.``, ``vs.``,
  ``U.S.``, German ``z. B.`` ...), after a single capital (an initial: ``John F.
  Kennedy``), or
  after a list marker (``1.``); a period after ``No.``, ``Fig.``, ``Jan.`` and the like
  when a number follows.

The CJK full stop ``。`` and full-width exclamation and question marks end a sentence
without a space. A line break always ends one, so list
items and headings come out on their own.

Markdown blocks are kept whole: a fenced code block (```` ``` ```` or ``~~~``) goes out
as one unit, fences and all, however many periods and lines it holds; a list item
(``- ``, ``* ``, ``+ ``, ``1. ``, ``1) ``) or a table row (``| ...``) is never cut
before the end of its line. Because a boundary often depends on the
next character (``3.`` may become ``3.14``), a sentence is returned only once the text
after it shows it is complete: usually one token later. :meth:`SentenceSplitter.flush`
returns whatever is left at the end.
"""

from __future__ import annotations

import re

__all__ = ["SentenceSplitter"]

_ENDS = frozenset(".!?…")
# The characters themselves, though some look like ASCII: these are the ones models emit.
_CJK_ENDS = frozenset("。！？｡")  # noqa: RUF001
_CLOSERS = frozenset("\"'”’)]}»›」』）】》〉*`")  # noqa: RUF001
_OPENERS = "\"'“‘([{«‹「『（【《〈*`"  # noqa: RUF001

#: Words after which a period never ends a sentence (lowercase, without the final period).
_NEVER_END = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "rev", "st", "sr", "gen", "col", "capt", "sgt",
        "lt", "hon", "vs", "cf", "e.g", "i.e", "viz", "approx", "u.s", "u.k", "u.n", "e.u",
        # German "z. B.", "u. a.", "d. h.": single letters that are never a sentence's last
        # word (unlike "3 h." in French, or a Russian year "1871 g.").
        "z", "u", "d",
    }
)  # fmt: skip
#: Words after which a period does not end a sentence when a number follows (``No. 5``).
_BEFORE_NUMBER = frozenset(
    {
        "no", "nos", "fig", "figs", "vol", "p", "pp", "eq", "ch", "sec", "art",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
_LIST_MARKER = re.compile(r"(?:\d+|[A-Za-z]|i{1,3}|iv|vi{0,3}|ix|x)\.", re.IGNORECASE)

#: A sentence that runs on this long without a boundary is cut at a space.
DEFAULT_MAX_LENGTH = 2000
#: A fenced code block this long (a runaway model) is cut at a line break after all.
MAX_BLOCK_LENGTH = 32000

# What a unit's first line may start with (after line breaks).
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_LINE_UNIT = re.compile(r"[ \t]*(?:[-*+][ \t]|\d{1,9}[.)][ \t]|\|)")
# The start of a line that may still turn out to open one of them.
_UNDECIDED = re.compile(r"[ \t]*(?:`{0,2}|~{0,2}|[-*+]|\d{1,9}[.)]?)")


class SentenceSplitter:
    """Takes text as it streams in; returns each sentence once it is surely complete.

    ``feed(text)`` returns the sentences that ``text`` completed (whitespace around them
    stripped, empty ones dropped), ``flush()`` the rest at the end of the stream. A
    sentence longer than ``max_length`` characters is cut at its last space.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        self.max_length = max_length
        self._text = ""
        # Everything before this index is known not to hold a boundary: rescanning it on
        # every token would make a long sentence quadratic.
        self._scan = 0
        # Whether the text starts a line, and if so what kind of unit it opens:
        # "fence", "line" (a list item or table row), "prose"; None while undecided.
        self._line_start = True
        self._kind: str | None = None

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the sentences it completed, in order."""
        self._text += text
        done: list[str] = []
        while True:
            cut = self._next_boundary()
            if cut is None:
                break
            end, resume = cut
            sentence = self._text[:end].strip()
            self._line_start = resume > 0 and self._text[resume - 1] == "\n"
            self._text = self._text[resume:]
            self._scan = 0
            self._kind = None
            if sentence:
                done.append(sentence)
        limit = MAX_BLOCK_LENGTH if self._kind == "fence" else self.max_length
        while len(self._text) > limit:
            done.append(self._cut_long(at_line=self._kind == "fence"))
            limit = self.max_length
        return done

    def flush(self) -> list[str]:
        """End of the stream: return what is left as the last sentence (if anything)."""
        rest = self._text.strip()
        self._text = ""
        self._scan = 0
        self._line_start = True
        self._kind = None
        return [rest] if rest else []

    def _cut_long(self, at_line: bool = False) -> str:
        size = MAX_BLOCK_LENGTH if at_line else self.max_length
        head = self._text[:size]
        space = head.rfind("\n" if at_line else " ")
        at = space if space > 0 else size
        sentence = self._text[:at].strip()
        self._text = self._text[at:].lstrip()
        self._scan = 0
        self._kind = None
        self._line_start = at_line
        return sentence

    def _classify(self) -> str | None:
        """What the unit at the start of the text is, or None until that is known."""
        if not self._line_start:
            return "prose"
        text = self._text.lstrip("\n")
        if _FENCE.match(text):
            return "fence"
        if _LINE_UNIT.match(text):
            return "line"
        if "\n" not in text and _UNDECIDED.fullmatch(text):
            return None
        return "prose"

    def _block_end(self) -> tuple[int, int] | None:
        """The end of the fenced code block the text starts with, once its closing
        fence line is complete."""
        text = self._text
        offset = len(text) - len(text.lstrip("\n"))
        opening = _FENCE.match(text, offset)
        assert opening is not None
        fence = opening.group(1)
        closing = re.compile(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*")
        first = text.find("\n", offset)
        if first < 0:
            return None
        at = max(first + 1, self._scan)
        while True:
            newline = text.find("\n", at)
            if newline < 0:
                self._scan = at
                return None
            if closing.fullmatch(text, at, newline):
                return newline, newline + 1
            at = newline + 1

    def _next_boundary(self) -> tuple[int, int] | None:
        """``(end, resume)`` of the first complete sentence, or ``None`` while undecided.

        Scanning stops at the first place that needs more text to decide.
        """
        if self._kind is None:
            self._kind = self._classify()
            if self._kind is None:
                return None
        if self._kind == "fence":
            return self._block_end()
        if self._kind == "line":
            newline = self._text.find("\n", self._scan)
            if newline < 0:
                self._scan = len(self._text)
                return None
            return newline, newline + 1
        text = self._text
        size = len(text)
        i = self._scan
        while i < size:
            char = text[i]
            if char == "\n":
                return i, i + 1
            if char not in _ENDS and char not in _CJK_ENDS:
                i += 1
                continue
            j = i
            while j < size and (text[j] in _ENDS or text[j] in _CJK_ENDS):
                j += 1
            while j < size and text[j] in _CLOSERS:
                j += 1
            if j == size:
                break  # more punctuation or a closing quote may follow
            if any(c in _CJK_ENDS for c in text[i:j]):
                return j, j
            if not text[j].isspace():
                i = j  # 3.14, example.com, "?)" inside a sentence
                continue
            k = j
            while k < size and text[k].isspace() and text[k] != "\n":
                k += 1
            if k == size:
                break  # the next word decides
            if text[k] != "\n" and not self._ends_here(text, i, j, k):
                i = k
                continue
            return j, j
        self._scan = i
        return None

    @staticmethod
    def _ends_here(text: str, i: int, j: int, k: int) -> bool:
        """Whether punctuation ``text[i:j]``, followed by spaces and ``text[k]``, ends a
        sentence (``text[k]`` is the first character of the next word)."""
        following = text[k]
        if following.islower():
            return False
        if text[i:j].rstrip("".join(_CLOSERS)) != ".":
            return True
        start = i
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        word = text[start:i].lstrip(_OPENERS)
        lowered = word.lower()
        if lowered in _NEVER_END:
            return False
        if lowered in _BEFORE_NUMBER and following.isdigit():
            return False
        if len(word) == 1 and word.isupper():
            return False  # an initial: John F. Kennedy
        # "1." or "b." opening a line is a list marker, not a sentence of its own.
        return not (_LIST_MARKER.fullmatch(text[start : i + 1]) and not text[:start].strip())
