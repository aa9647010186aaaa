"""``hub serve | publish | tail | worker``: every option also from ``HUB_<OPTION>``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from .config import Settings
from .errors import HubError

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Real-time broadcast hub: SSE to browsers, Redis between nodes."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a hub node")
    serve.add_argument("--host", help="interface to listen on (HUB_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (HUB_PORT, default 8000)")
    serve.add_argument(
        "--redis-url", help="redis://host:port/db (HUB_REDIS_URL); none: embedded in-memory"
    )
    serve.add_argument("--key-prefix", help="prefix of every Redis key (HUB_KEY_PREFIX)")
    serve.add_argument("--history-size", type=int, help="events kept per channel")
    serve.add_argument("--history-ttl", type=float, help="seconds events are kept (0: no limit)")
    serve.add_argument("--heartbeat", type=float, help="seconds between heartbeat comments")
    serve.add_argument("--max-channels", type=int, help="channels per connection")
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port, each with its own Redis connections (HUB_WORKERS, "
        "default 1); needs --redis-url",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--log-format", choices=["text", "json"], help="text (default) or json (HUB_LOG_FORMAT)"
    )

    publish = commands.add_parser("publish", help="publish one event and print its id")
    publish.add_argument("channel")
    publish.add_argument("data")
    publish.add_argument("--event", help="event type (default: message)")
    where = publish.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"hub URL (HUB_URL, default {DEFAULT_URL})")
    where.add_argument("--redis-url", help="publish straight into this Redis instead")

    tail = commands.add_parser("tail", help="print events as they arrive, as JSON lines")
    tail.add_argument("channels", nargs="+", metavar="CHANNEL")
    tail.add_argument("--url", help=f"hub URL (HUB_URL, default {DEFAULT_URL})")
    tail.add_argument("--last-event-id", help="resume after this id ('earliest': all history)")

    worker = commands.add_parser("worker", help="run a producer worker from workers/")
    worker.add_argument("name", help="worker module in workers/, e.g. ticker")
    worker.add_argument("args", nargs=argparse.REMAINDER, help="the worker's own options")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "publish":
            return asyncio.run(_publish(args))
        if args.command == "tail":
            return asyncio.run(_tail(args))
        return _worker(args)
    except HubError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        key_prefix=args.key_prefix,
        history_size=args.history_size,
        history_ttl=args.history_ttl,
        heartbeat=args.heartbeat,
        max_channels=args.max_channels,
        workers=args.workers,
        log_level=args.log_level,
        log_format=args.log_format,
    )
    return serve(settings)


async def _publish(args: argparse.Namespace) -> int:
    if args.redis_url:
        from .publisher import Publisher

        publisher = Publisher.from_url(args.redis_url)
        try:
            event_id = await publisher.publish(args.channel, args.data, event=args.event)
        finally:
            await publisher.aclose()
    else:
        from .client import HubClient

        async with HubClient(_hub_url(args)) as client:
            event_id = await client.publish(args.channel, args.data, event=args.event)
    print(event_id)
    return 0


async def _tail(args: argparse.Namespace) -> int:
    from .client import HubClient

    # Reconnect notices go to stderr, marked as ours; events alone go to stdout.
    logging.basicConfig(level=logging.WARNING, format="hub: %(message)s")

    async with HubClient(_hub_url(args)) as client:
        async for event in client.subscribe(args.channels, last_event_id=args.last_event_id):
            line = {"id": event.id, "event": event.event, "data": event.data}
            print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


def _worker(args: argparse.Namespace) -> int:
    name = args.name.replace("-", "_")
    try:
        module = importlib.import_module(f"workers.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"workers.{name}":
            raise
        raise HubError(f"no worker named {args.name!r}; available: {_runnable_workers()}") from None
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise HubError(
            f"workers.{name} is part of the worker kit, not a worker; "
            f"available: {_runnable_workers()}"
        )
    return int(entry(args.args) or 0)


def _runnable_workers() -> str:
    import workers

    names = []
    for info in pkgutil.iter_modules(workers.__path__):
        module = importlib.import_module(f"workers.{info.name}")
        if callable(getattr(module, "main", None)):
            names.append(info.name)
    return ", ".join(sorted(names))


def _hub_url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("HUB_URL") or DEFAULT_URL)


if __name__ == "__main__":
    raise SystemExit(main())
