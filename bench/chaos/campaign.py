"""One chaos run: start Redis, a relay, N nodes and haproxy; clients and publishers;
faults for ``duration`` seconds; then heal everything, let the clients catch up, and
check what they got. Or, with ``url``, the same clients and checker against a hub
someone else runs, without faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hub import Publisher, Settings

from .checker import (
    ClientLog,
    Policy,
    Report,
    Violation,
    any_reset_policy,
    check,
    hub_policy,
)
from .client import ChaosClient
from .faults import Faults
from .processes import Haproxy, HubNode, Processes, RedisProc
from .publishers import Publishing
from .relay import SilentRelay

PREFIX = "chaos:"


@dataclass
class Options:
    duration: float = 60.0
    nodes: int = 3
    seed: int = 0
    clients: int = 8
    channels: int = 4
    rate: float = 30.0
    history_size: int = 300
    drain: float = 40.0
    url: str | None = None
    protocol: str = "native"
    publish_token: str | None = None
    subscribe_token: str | None = None
    verbose: bool = False
    keep: bool = False


@dataclass
class Outcome:
    report: Report
    faults: dict[str, int]
    answers: dict[str, int]
    samples: dict[str, str]
    streams: int
    failed_streams: int
    not_caught_up: list[str]
    seconds: float
    workdir: str | None


class Campaign:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.procs = Processes()
        self.workdir: Path | None = None
        self.redis: RedisProc
        self.relay: SilentRelay | None = None
        self.nodes: list[HubNode] = []
        self.balancer_url = opts.url or ""
        self.publisher: Publisher | None = None
        self.burst_http = httpx.AsyncClient(timeout=10)
        self.channels = [f"chaos{i}" for i in range(opts.channels)]
        if opts.protocol == "mercure":
            self.channels = [f"https://chaos.example/{c}" for c in self.channels]
        self.publishing = Publishing(self.channels, self.rng, protocol=opts.protocol)
        self.clients: list[ChaosClient] = []
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        if self.opts.verbose:
            print(f"[{time.monotonic() - self._started:7.1f}s] {text}", flush=True)

    # -- setting up ---------------------------------------------------------------------

    async def _start_cluster(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hub-chaos-"))
        self.redis = RedisProc(self.workdir)
        self.procs.add(self.redis)
        await asyncio.to_thread(self.redis.start)
        self.relay = SilentRelay(self.redis.port)
        await self.relay.start()
        env = {
            "HUB_KEY_PREFIX": PREFIX,
            "HUB_HISTORY_SIZE": str(self.opts.history_size),
            "HUB_CLIENT_BUFFER": str(64 * 1024),
            "HUB_SEND_TIMEOUT": "3",
            "HUB_HEARTBEAT": "2",
            "HUB_RETRY_MS": "500",
            "HUB_POSITION_CHECK": "3",
            "HUB_LOG_LEVEL": "warning",
        }
        for i in range(self.opts.nodes):
            node = HubNode(i, self.relay.url, self.workdir, env)
            self.procs.add(node)
            self.nodes.append(node)
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in self.nodes))
        haproxy = Haproxy([n.port for n in self.nodes], self.workdir)
        self.procs.add(haproxy)
        await asyncio.to_thread(haproxy.start)
        self.balancer_url = haproxy.url
        settings = Settings(key_prefix=PREFIX, history_size=self.opts.history_size)
        self.publisher = Publisher.from_url(self.redis.url, settings)
        self.say(f"redis :{self.redis.port}, nodes {[n.port for n in self.nodes]}, {haproxy.url}")

    def _target(self) -> str:
        # Two in three through the balancer, the others straight to a random node.
        if self.nodes and self.rng.random() < 1 / 3:
            return self.rng.choice(self.nodes).url
        return self.balancer_url

    def _make_clients(self) -> None:
        for i in range(self.opts.clients):
            follow = self.rng.sample(self.channels, self.rng.randint(1, min(3, len(self.channels))))
            mercure = self.opts.protocol == "mercure"
            client = ChaosClient(
                f"client{i}",
                follow,
                self._target,
                protocol=self.opts.protocol,
                token=self.opts.subscribe_token,
                live_start=(lambda: (self.publishing.sent,)) if mercure else None,
                order_of=self.publishing.order_of if mercure else None,
                rng=random.Random(self.rng.random()),
            )
            self.clients.append(client)
            client.start()

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> Outcome:
        managed = self.opts.url is None
        faults = Faults(self, self.rng)
        try:
            if managed:
                await self._start_cluster()
            self._make_clients()
            await self._wait_joined()
            tasks = self._publishers(managed)
            loop = asyncio.get_running_loop()
            until = loop.time() + self.opts.duration
            if managed:
                await faults.run(until)
            else:
                await self._reconnect_now_and_then(until)
            await self._heal()
            self.publishing.stop()
            await asyncio.gather(*tasks)
            not_caught_up = await self._drain()
            report = check(self.publishing.ledger, self._logs(), self._policy(managed))
            if self.opts.keep and self.workdir is not None:
                self._dump(self.workdir / "records.json")
            if "HTTP 500" in self.publishing.samples:
                # The Guarantees table: a failing Redis gives 503 and Retry-After, never 500.
                why = self.publishing.samples["HTTP 500"]
                report.violations.append(Violation("server_error", "-", "-", why))
            return Outcome(
                report,
                dict(faults.injected),
                dict(self.publishing.answers),
                dict(self.publishing.samples),
                sum(c.streams for c in self.clients),
                sum(c.failed_streams for c in self.clients),
                not_caught_up,
                time.monotonic() - self._started,
                str(self.workdir) if self.opts.keep else None,
            )
        finally:
            await self.close()

    def _publishers(self, managed: bool) -> list[asyncio.Task[None]]:
        p, rate = self.publishing, self.opts.rate
        if not managed:
            # One sequential publisher: against any hub its acknowledgements are in order.
            loop = p.http_loop("http", lambda: self.balancer_url, rate, self.opts.publish_token)
            return [asyncio.create_task(loop)]
        assert self.publisher is not None
        return [
            asyncio.create_task(p.http_loop("http-a", self._target, rate * 0.35)),
            asyncio.create_task(p.http_loop("http-b", self._target, rate * 0.35)),
            asyncio.create_task(p.redis_loop("redis", self.publisher, rate * 0.3)),
        ]

    async def _wait_joined(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while any(c.log is None for c in self.clients):
            if loop.time() > deadline:
                late = [c.name for c in self.clients if c.log is None]
                raise RuntimeError(f"clients never got a stream open: {late}")
            await asyncio.sleep(0.1)

    async def _reconnect_now_and_then(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await asyncio.sleep(min(self.rng.uniform(1, 4), max(0.0, until - loop.time())))
            self.rng.choice(self.clients).reconnect()

    async def _heal(self) -> None:
        """Everything back up, so that what remains owed can be delivered."""
        if self.relay is not None:
            self.relay.heal()
        if self.opts.url is None and not self.redis.running:
            await asyncio.to_thread(self.redis.start)
        for node in self.nodes:
            if not node.running:
                await asyncio.to_thread(node.start)
        for client in self.clients:
            client.misbehave("normal", 0)

    async def _drain(self) -> list[str]:
        """Wait until every client has what was acknowledged on its channels (each event
        or a reset past it), for at most ``drain`` seconds; returns those still behind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.drain
        latest = self.publishing.latest.get
        while loop.time() < deadline:
            if all(c.caught_up(latest) for c in self.clients):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)  # anything late (a duplicate) still gets recorded
        return [c.name for c in self.clients if not c.caught_up(latest)]

    def _dump(self, path: Path) -> None:
        """The ledger and every client's records, to look into a violation."""
        ledger = {
            t: [e.channel, e.order, e.acked] for t, e in self.publishing.ledger.events.items()
        }
        clients = {
            log.name: {
                "channels": log.channels,
                "start": log.start,
                "records": [[type(r).__name__, *dataclasses.astuple(r)] for r in log.records],
            }
            for log in self._logs()
        }
        path.write_text(json.dumps({"ledger": ledger, "clients": clients}))

    def _logs(self) -> list[ClientLog]:
        return [c.log for c in self.clients if c.log is not None]

    def _policy(self, managed: bool) -> Policy:
        if not managed:
            return any_reset_policy
        # Redis runs with AOF and fsync always: no fault here loses its data.
        return hub_policy(self.publishing.ledger, self.opts.history_size, lambda: False)

    async def close(self) -> None:
        """Stop clients and publishers, end every process started, remove the files."""
        self.publishing.stop()
        await asyncio.gather(*(c.stop() for c in self.clients), return_exceptions=True)
        await self.burst_http.aclose()
        if self.publisher is not None:
            # Closing after a broken Redis may fail; there is nothing left to do about it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.aclose(), 5)
        if self.relay is not None:
            await self.relay.close()
        await asyncio.to_thread(self.procs.cleanup)
        if self.workdir is not None and not self.opts.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
