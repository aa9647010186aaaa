"""The ticker: publishes a ``tick`` event every INTERVAL seconds, for demos and checks.

    hub worker ticker --channel ticker --interval 1 [--redis-url URL] [--count N]
    python -m workers.ticker --count 3 --interval 0.1

Each event's data is ``{"time": ISO-8601 UTC, "host": hostname, "pid": pid, "seq": n}``;
``seq`` counts from 1 in each process, so a subscriber can spot gaps and duplicates, and
``host``/``pid`` tell tickers on several machines apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from hub import Publisher

from .base import Worker
from .options import channel_name, positive_float, positive_int

__all__ = ["EVENT_TYPE", "Ticker", "main"]

#: The SSE event type of every tick.
EVENT_TYPE = "tick"


class Ticker(Worker):
    """Publishes a ``tick`` event to one channel at a fixed rate."""

    name = "ticker"
    description = "Publish a 'tick' event {time, host, pid, seq} to CHANNEL every INTERVAL seconds."

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--channel",
            type=channel_name,
            default="ticker",
            help="channel to publish to (default: ticker)",
        )
        parser.add_argument(
            "--interval",
            type=positive_float,
            default=1.0,
            metavar="SECONDS",
            help="seconds between ticks (default: 1.0)",
        )
        parser.add_argument(
            "--count",
            type=positive_int,
            default=None,
            metavar="N",
            help="stop after N ticks (default: run until stopped)",
        )

    def __init__(self, options: argparse.Namespace, publisher: Publisher) -> None:
        super().__init__(options, publisher)
        self.channel: str = options.channel
        self.interval = options.interval
        self.max_steps = options.count
        self.host = socket.gethostname()
        self.pid = os.getpid()

    def describe(self) -> dict[str, Any]:
        return {"channel": self.channel, **super().describe()}

    def tick(self, seq: int) -> dict[str, Any]:
        """The data of tick number ``seq``, stamped now."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return {"time": now, "host": self.host, "pid": self.pid, "seq": seq}

    async def step(self, n: int) -> None:
        # The data is made once: a retried publish sends the very same tick, so a
        # duplicate left by a lost reply carries the same seq and time.
        event_id = await self.publish(self.channel, self.tick(n), event=EVENT_TYPE)
        self.log(logging.DEBUG, "tick published", channel=self.channel, seq=n, id=event_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hub worker ticker``; returns the process exit code."""
    return Ticker.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
