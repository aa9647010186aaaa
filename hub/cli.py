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
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, NoReturn

from hub.config import Settings, field_docs
from hub.errors import ConfigError, HubError
from hub.logs import redact_handlers

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"
#: Events per request when ``hub publish`` reads stdin (the hub takes 1000 by default).
STDIN_BATCH = 500


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage of ``serve``, with a flag per
    setting, would bury it), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hub", description="Real-time broadcast hub: SSE to browsers, Redis between nodes."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run a hub node",
        description="Run a hub node. Every option is also read from HUB_<OPTION> (flags win).",
    )
    _settings_flags(serve)
    serve.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="'NAME [OPTIONS]'",
        help="run a producer worker inside this hub process, e.g. --worker llm "
        "--worker 'ticker --interval 0.5' (repeatable; the way to feed the embedded backend)",
    )

    publish = commands.add_parser(
        "publish",
        help="publish one event (or NDJSON from stdin) and print the ids",
        description=(
            "Publish DATA to CHANNEL and print the event's id. Without arguments, read "
            'publish objects from stdin, one JSON object a line ({"channel": "news", '
            '"data": ...}), publish them in batches and print one id a line.'
        ),
    )
    publish.add_argument("channel", nargs="?")
    publish.add_argument("data", nargs="?")
    publish.add_argument("--event", help="event type (default: message)")
    publish.add_argument(
        "--batch",
        type=int,
        default=STDIN_BATCH,
        help=f"reading stdin: events per request at most (default {STDIN_BATCH})",
    )
    where = publish.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"hub URL (HUB_URL, default {DEFAULT_URL})")
    where.add_argument("--redis-url", help="publish straight into this Redis instead")
    _token_flag(publish)

    tail = commands.add_parser("tail", help="print events as they arrive, as JSON lines")
    tail.add_argument("channels", nargs="+", metavar="CHANNEL")
    tail.add_argument("--url", help=f"hub URL (HUB_URL, default {DEFAULT_URL})")
    tail.add_argument("--last-event-id", help="resume after this id ('earliest': all history)")
    _token_flag(tail)

    worker = commands.add_parser("worker", help="run a producer worker from workers/")
    worker.add_argument("name", help="worker module in workers/, e.g. ticker")
    worker.add_argument("args", nargs=argparse.REMAINDER, help="the worker's own options")
    return parser


def _token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        help="JWT sent as 'Authorization: Bearer', for a hub with a key (HUB_TOKEN; prefer "
        "the variable: other users can read command lines)",
    )


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
        print(f"hub: {exc}{_token_hint(args, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, so the command line and HUB_* variables cover the same."""
    docs = field_docs()
    for field in fields(Settings):
        # "int", "float", "bool", "str" or "str | None" (annotations are strings here)
        kind = str(field.type).split(" ")[0]
        converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _yes_no}
        convert = converters.get(kind, str)
        env = f"HUB_{field.name.upper()}"
        default = "none" if field.default in (None, "") else field.default
        if isinstance(default, bool):
            default = int(default)
        text = docs.get(field.name, "").replace("%", "%%")
        note = f"{env}, default {default}"
        if field.name in _SECRETS:
            note += "; prefer the variable: other users can read command lines"
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=convert,
            metavar=kind.upper() if convert is not str else "TEXT",
            help=f"{text} ({note})".strip(),
        )


#: Settings that hold secrets: flags work, but the environment keeps them out of `ps`.
_SECRETS = {"jwt_key", "publisher_jwt_key", "subscriber_jwt_key", "redis_url"}


def _yes_no(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{raw!r}: use 1 or 0")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``hub serve``'s settings: flags over HUB_* variables over defaults."""
    return Settings.from_env(**{f.name: getattr(args, f.name, None) for f in fields(Settings)})


def _serve(args: argparse.Namespace) -> int:
    from hub.server import serve

    return serve(settings_from_args(args), workers=args.worker)


async def _publish(args: argparse.Namespace) -> int:
    if args.channel is None:
        from hub.stdin_publish import publish_stdin

        if args.event is not None:
            raise HubError('--event is for one event; in NDJSON, give each line an "event"')
        url = None if args.redis_url else _hub_url(args)
        return await publish_stdin(url, args.redis_url, args.batch)
    if args.data is None:
        raise HubError(
            "give the data after the channel (hub publish news 'hello'), or no arguments "
            "at all to read NDJSON from stdin"
        )
    if args.redis_url:
        if args.token:
            raise ConfigError(
                "--token is for publishing over HTTP; --redis-url writes straight into "
                "Redis, which takes no token: drop one of them"
            )
        from hub.store.publisher import Publisher

        publisher = Publisher.from_url(args.redis_url)
        try:
            event_id = await publisher.publish(args.channel, args.data, event=args.event)
        finally:
            await publisher.aclose()
    else:
        from hub.client import HubClient

        async with HubClient(_hub_url(args), token=_token(args)) as client:
            event_id = await client.publish(args.channel, args.data, event=args.event)
    print(event_id)
    return 0


async def _tail(args: argparse.Namespace) -> int:
    from hub.client import HubClient

    # Reconnect notices go to stderr, marked as ours; events alone go to stdout.
    logging.basicConfig(level=logging.WARNING, format="hub: %(message)s")
    redact_handlers()

    async with HubClient(_hub_url(args), token=_token(args)) as client:
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


def _token_hint(args: argparse.Namespace, exc: HubError) -> str:
    # The hub's 401 message speaks of HTTP headers; on the command line it is a flag.
    refused = "(HTTP 401 from " in str(exc)
    if refused and args.command in ("publish", "tail") and not _token(args):
        return "; give the token with --token or HUB_TOKEN"
    return ""


def _token(args: argparse.Namespace) -> str | None:
    token = args.token or os.environ.get("HUB_TOKEN") or None
    return token.strip() if token else None


if __name__ == "__main__":
    raise SystemExit(main())
