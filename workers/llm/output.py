"""How an answer's text becomes events: whole sentences, or coalesced deltas.

Both take the model's text piece by piece (:meth:`feed`) and say what to publish now;
:meth:`flush` gives the rest at the end. ``text`` is everything fed, exactly as the
model wrote it: the ``done`` event's ``text``.
"""

from __future__ import annotations

from .sentences import SentenceSplitter

__all__ = ["DELTA_INTERVAL", "DeltaOutput", "Output", "SentenceOutput", "output_for"]

#: At most one ``delta`` event per this many seconds: a long answer must not flood the
#: channel's history (and every subscriber) with one event per token.
DELTA_INTERVAL = 0.05


class Output:
    """Common part: the text so far, and the events it gave."""

    event = "sentence"

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self.events = 0

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def feed(self, piece: str, now: float) -> list[str]:
        """Add ``piece`` (at time ``now``); return the data of the events to publish."""
        self._pieces.append(piece)
        return self._take(piece, now)

    def due_in(self, now: float) -> float | None:
        """Seconds until held-back text should go out even if nothing more comes."""
        return None

    def ready(self, now: float) -> list[str]:
        """What is due at ``now`` without new text."""
        return []

    def flush(self) -> list[str]:
        """The end of the answer (or a stop): whatever is held back."""
        return []

    def _take(self, piece: str, now: float) -> list[str]:
        raise NotImplementedError


class SentenceOutput(Output):
    """``sentence`` events: each sentence once it is complete."""

    event = "sentence"

    def __init__(self) -> None:
        super().__init__()
        self.splitter = SentenceSplitter()

    def _take(self, piece: str, now: float) -> list[str]:
        return self.splitter.feed(piece)

    def flush(self) -> list[str]:
        return self.splitter.flush()


class DeltaOutput(Output):
    """``delta`` events: the raw text added, at most one event per ``interval``."""

    event = "delta"

    def __init__(self, interval: float = DELTA_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._held = ""
        self._last: float | None = None

    def _take(self, piece: str, now: float) -> list[str]:
        self._held += piece
        return self.ready(now)

    def due_in(self, now: float) -> float | None:
        if not self._held:
            return None
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.interval - now)

    def ready(self, now: float) -> list[str]:
        if not self._held or (self._last is not None and now - self._last < self.interval):
            return []
        self._last = now
        held, self._held = self._held, ""
        return [held]

    def flush(self) -> list[str]:
        held, self._held = self._held, ""
        return [held] if held else []


def output_for(mode: str) -> Output:
    """The output for a request's ``stream`` mode."""
    return DeltaOutput() if mode == "delta" else SentenceOutput()
