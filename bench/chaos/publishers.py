"""Publishers that write down what was acknowledged: over HTTP (the native ``/publish``
or Mercure's form POST) and straight into Redis (``hub.Publisher``). Each event's data
starts with a token, ``channel:publisher:n``, that names it whatever id it gets; some
carry padding, so that slow clients overflow their queues."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Sequence

import httpx

from hub import HubError, Publisher

from .checker import Ledger, Order, parse_hub_id


class Publishing:
    """The ledger and the publishers feeding it."""

    def __init__(self, channels: Sequence[str], rng: random.Random, *, protocol: str) -> None:
        self.channels = list(channels)
        self._weights = [1 / (i + 1) for i in range(len(self.channels))]
        self.ledger = Ledger()
        self.protocol = protocol
        self.rng = rng
        self.answers: Counter[str] = Counter()
        #: The first answer body of each HTTP status other than success.
        self.samples: dict[str, str] = {}
        self.latest: dict[str, Order] = {}
        #: Mercure mode: publishes are sequential, their count is the order.
        self.sent = 0
        self._counts: Counter[str] = Counter()
        #: Mercure mode: the order of each token sent, known before its answer comes
        #: (a subscriber often gets the event first).
        self._sent_orders: dict[str, Order] = {}
        self._stop = asyncio.Event()

    def _channel(self) -> str:
        # Skewed (Zipf): the busiest channel outruns its history long before the
        # quietest, so a client away for a while on both resumes one and resets the other.
        return self.rng.choices(self.channels, self._weights)[0]

    def _token(self, publisher: str, channel: str) -> tuple[str, str]:
        self._counts[publisher] += 1
        token = f"{channel}:{publisher}:{self._counts[publisher]}"
        pad = self.rng.choice((0, 0, 0, 200, 2000))
        return token, token + (" " + "x" * pad if pad else "")

    def _acked(self, channel: str, token: str, order: Order) -> None:
        self.ledger.acked(channel, token, order)
        self.answers["acknowledged"] += 1
        if order > self.latest.get(channel, (-1,)):
            self.latest[channel] = order

    def order_of(self, token: str) -> Order | None:
        event = self.ledger.events.get(token)
        if event is not None and event.order is not None:
            return event.order
        return self._sent_orders.get(token)

    def stop(self) -> None:
        self._stop.set()

    async def _pause(self, rate: float) -> None:
        # Poisson-ish arrivals at ``rate`` per second; wakes at once when stopping.
        delay = self.rng.expovariate(rate) if rate > 0 else 1.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), min(delay, 2.0))

    # -- over HTTP ----------------------------------------------------------------------

    async def http_loop(
        self, name: str, base: Callable[[], str], rate: float, token: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=10, headers=headers) as http:
            while not self._stop.is_set():
                await self.http_one(http, name, base())
                await self._pause(rate)

    async def http_one(self, http: httpx.AsyncClient, name: str, base: str) -> None:
        channel = self._channel()
        token, data = self._token(name, channel)
        try:
            if self.protocol == "mercure":
                self.sent += 1
                order: Order | None = (self.sent,)
                self._sent_orders[token] = (self.sent,)
                response = await http.post(
                    f"{base}/.well-known/mercure", data={"topic": channel, "data": data}
                )
                ok = response.status_code == 200
            else:
                response = await http.post(
                    f"{base}/publish", json={"channel": channel, "data": data}
                )
                ok = response.status_code == 201
                order = parse_hub_id(response.json().get("id")) if ok else None
        except (httpx.HTTPError, ValueError):
            self.answers["no answer"] += 1
            self.ledger.uncertain(
                channel, token, (self.sent,) if self.protocol == "mercure" else None
            )
            return
        if ok and order is not None:
            self._acked(channel, token, order)
            return
        status = f"HTTP {response.status_code}"
        self.answers[status] += 1
        # What each kind of refusal said, once: a 500 is a hub bug worth reading.
        self.samples.setdefault(status, response.text[:300])
        if response.status_code >= 500 or response.status_code == 429:
            # 503: may or may not have been published (a timeout), say the docs.
            self.ledger.uncertain(channel, token, order if self.protocol == "mercure" else None)

    # -- straight into Redis ------------------------------------------------------------

    async def redis_loop(self, name: str, publisher: Publisher, rate: float) -> None:
        while not self._stop.is_set():
            await self.redis_one(publisher, name)
            await self._pause(rate)

    async def redis_one(self, publisher: Publisher, name: str) -> None:
        channel = self._channel()
        token, data = self._token(name, channel)
        try:
            event_id = await asyncio.wait_for(publisher.publish(channel, data), 10)
        except (HubError, asyncio.TimeoutError, OSError):
            self.answers["redis error"] += 1
            self.ledger.uncertain(channel, token)
            return
        order = parse_hub_id(event_id)
        if order is None:
            raise RuntimeError(f"Publisher.publish returned {event_id!r}, not a hub id")
        self._acked(channel, token, order)

    async def burst(
        self, size: int, http: httpx.AsyncClient, base: str, publisher: Publisher | None
    ) -> None:
        """``size`` publishes at once, over HTTP and into Redis."""
        jobs = []
        for i in range(size):
            if publisher is not None and i % 2:
                jobs.append(self.redis_one(publisher, "burst-redis"))
            else:
                jobs.append(self.http_one(http, "burst-http", base))
        await asyncio.gather(*jobs)
