"""A conversation is a channel: what its history says about the questions asked in it.

The worker reads the conversation channel's history stream (``{prefix}stream:<channel>``)
and folds its events, in order, into :class:`Turn` records:

- ``question`` (``{"request_id", "prompt"}``) opens a turn;
- ``sentence`` and ``delta`` add to the oldest open turn (answers in one conversation
  go one at a time, in the order of their questions, so that is the one being answered);
- ``restart`` (``{"request_id"}``) clears a turn's answer so far;
- ``stop`` (``{"request_id"}``) marks a turn as asked to stop;
- ``done`` (``{"request_id", "text", ...}``) and ``error`` close a turn.

From that it tells whether a request may be answered now (every earlier question is
closed), whether it was asked to stop, and the earlier turns to give the model as
context, within a budget of characters (the oldest turns drop first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio

from hub.store import Keys

__all__ = ["Conversation", "Turn", "context_messages"]

#: History entries read per command while loading a conversation.
_PAGE = 500


@dataclass
class Turn:
    """One question in a conversation, and what became of it."""

    request_id: str
    prompt: str
    #: The answer as published so far: sentences (``"s"``) and deltas (``"d"``).
    parts: list[tuple[str, str]] = field(default_factory=list)
    #: Set by ``done`` (the whole answer) or ``error`` (``None``).
    closed: bool = False
    answer: str | None = None
    finish_reason: str | None = None
    stop_requested: bool = False

    def text_so_far(self) -> str:
        """The answer published so far (sentences joined by a space, deltas as they are)."""
        text = ""
        for kind, piece in self.parts:
            if kind == "s" and text and not text.endswith(("\n", " ")):
                text += " "
            text += piece
        return text


class Conversation:
    """The turns of one conversation channel, read from its history and kept up to date
    with :meth:`follow`."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.key = keys.stream(channel)
        self.turns: dict[str, Turn] = {}
        #: Request ids of open turns, oldest first.
        self.open: list[str] = []
        #: Request ids a stop was published for, whether or not their turn is known.
        self.stops: set[str] = set()
        #: Request ids with a ``done`` or ``error``, whether or not their turn is known.
        self.finished: set[str] = set()
        self.cursor = "0-0"

    async def load(self) -> Conversation:
        """Read the whole retained history."""
        while True:
            start = "-" if self.cursor == "0-0" else f"({self.cursor}"
            entries = await self.client.xrange(self.key, start, "+", count=_PAGE)
            self._fold(cast("list[tuple[bytes, dict[bytes, bytes]]]", entries or []))
            if len(entries or []) < _PAGE:
                return self

    async def follow(self) -> bool:
        """Read the events published since; return whether there were any.

        A short read, not a blocking one: callers poll, so that no Redis connection is
        held waiting, and a cancelled poll never leaves one half-read.
        """
        reply = await self.client.xread({self.key: self.cursor}, count=_PAGE)
        entries = [e for _key, found in cast("list[Any]", reply or []) for e in found]
        self._fold(entries)
        return bool(entries)

    def waiting_for(self, request_id: str) -> str | None:
        """The open question asked before ``request_id`` (to be answered first), if any."""
        for earlier in self.open:
            if earlier == request_id:
                return None
            return earlier
        return None

    def history(self, before: str) -> list[Turn]:
        """The turns whose questions came before ``before``'s and that have an answer
        (an answer stopped part-way counts: the person saw it)."""
        earlier: list[Turn] = []
        for turn in self.turns.values():
            if turn.request_id == before:
                break
            if turn.answer:
                earlier.append(turn)
        return earlier

    def _fold(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            event = fields.get(b"e", b"message").decode("utf-8", "replace")
            data = fields.get(b"d", b"").decode("utf-8", "replace")
            if event in ("sentence", "delta"):
                if self.open:
                    self.turns[self.open[0]].parts.append((event[0], data))
                continue
            if event not in ("question", "restart", "stop", "done", "error"):
                continue
            body = _json(data)
            request_id = body.get("request_id")
            if not isinstance(request_id, str):
                continue
            turn = self.turns.get(request_id)
            if event == "question" and turn is None:
                prompt = body.get("prompt")
                self.turns[request_id] = Turn(request_id, prompt if isinstance(prompt, str) else "")
                self.open.append(request_id)
            elif event == "stop":
                self.stops.add(request_id)
                if turn is not None:
                    turn.stop_requested = True
            elif event in ("done", "error"):
                self.finished.add(request_id)
            if turn is None or event in ("question", "stop"):
                continue
            if event == "restart":
                turn.parts.clear()
            elif not turn.closed:  # done or error
                turn.closed = True
                if event == "done":
                    text = body.get("text")
                    turn.answer = text if isinstance(text, str) else turn.text_so_far()
                    turn.finish_reason = body.get("finish_reason")
                if request_id in self.open:
                    self.open.remove(request_id)


def context_messages(turns: list[Turn], budget: int) -> list[dict[str, str]]:
    """The earlier turns as chat messages, newest kept first, within ``budget``
    characters of questions and answers together (the oldest turns drop first)."""
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(turns):
        answer = turn.answer or ""
        size = len(turn.prompt) + len(answer)
        if used + size > budget:
            break
        used += size
        kept[:0] = [
            {"role": "user", "content": turn.prompt},
            {"role": "assistant", "content": answer},
        ]
    return kept


def _json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
