"""Logging for the hub and its workers: readable text (the default) or one JSON object per line.

Both formats carry the same things: the time, the level, the logger, the message, the
record's structured fields, and the traceback if there is one. Fields are given as
``extra=log_fields(key=value, ...)``, which is ``extra={"fields": {...}}``:

- text: ``2026-11-23 22:08:25,835 INFO hub.connections: stream closed ... reason=client``
  (``logger[pid]`` when several processes share the stream), each field as ``key=value``
  after the message, a traceback on the lines below;
- JSON (``HUB_LOG_FORMAT=json``, ``hub serve --log-format json``, a worker's
  ``--log-json``): ``ts`` (UTC), ``level``, ``logger``, ``pid``, ``msg``, the fields as
  keys of their own, and ``exc`` with the traceback. uvicorn's lines are JSON too.

Each closed stream is logged once by the ``hub.connections`` logger with
``event="stream_closed"``, ``duration_s``, ``events``, ``reason`` and ``channels``, ready
for a log pipeline to aggregate.

Workers, which run no web server, use this module too: it must import nothing of the
web stack (starlette, uvicorn, jwt, prometheus_client).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "level_number",
    "log_fields",
    "log_stream_closed",
]

LOG_FORMATS = ("text", "json")
#: The level names to offer; the other names ``logging`` knows (``warn``) work as well.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: The keys of every JSON line, in this order; a field cannot take one of them over.
JSON_KEYS = ("ts", "level", "logger", "pid", "msg", "exc")

#: One line per closed stream, at INFO.
connections_logger = logging.getLogger("hub.connections")


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a record with structured fields, e.g.
    ``logger.info("answered", extra=log_fields(request=rid, seconds=1.2))``."""
    return {"fields": fields}


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _text_value(value: object) -> str:
    text = str(value)
    # Quoted only when needed, so the common case stays readable and still splits on spaces.
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: readable, and still greppable.

    ``with_pid`` writes ``logger[pid]``, for several processes writing to one stream.
    """

    def __init__(self, *, with_pid: bool = False) -> None:
        who = "%(name)s[%(process)d]" if with_pid else "%(name)s"
        super().__init__(f"%(asctime)s %(levelname)s {who}: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Fields go right after the message, before the traceback that format() appends.
        line = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``pid``, ``msg``, the
    record's fields, and ``exc`` when it carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            # A field must not pass itself off as one of the keys log shippers rely on.
            if key not in JSON_KEYS:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def level_number(level: str) -> int:
    """The ``logging`` level called ``level`` (any case); :class:`ConfigError` if none is."""
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ConfigError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return number


def configure_logging(
    level: str,
    fmt: str = "text",
    *,
    several_processes: bool = False,
    verbose_loggers: Sequence[str] | None = None,
) -> None:
    """Send every log record to stderr, one line each, in ``fmt`` (``text`` or ``json``).

    The root logger's handlers are replaced, so that each record is written once and in
    this format. ``several_processes``: text lines name the process. In JSON mode
    uvicorn's loggers go through the root logger too (start uvicorn with
    ``log_config=None`` so that it leaves them alone). ``verbose_loggers``: only these
    loggers (and their children) go below INFO, so that ``debug`` shows the program's
    own detail rather than asyncio's or redis-py's; ``None`` sets ``level`` everywhere.

    Raises :class:`ConfigError` for an unknown level or format.
    """
    number = level_number(level)
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(with_pid=several_processes))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if verbose_loggers is None:
        root.setLevel(number)
    else:
        root.setLevel(max(number, logging.INFO))
        for name in verbose_loggers:
            logging.getLogger(name).setLevel(number)
    if fmt == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True


def log_stream_closed(
    *, seconds: float, events: int, reason: str, detail: str, channels: int
) -> None:
    """The one line per closed stream: how long it lasted, what it got, why it ended."""
    if not connections_logger.isEnabledFor(logging.INFO):
        return
    connections_logger.info(
        "stream closed after %.1fs, %d events sent: %s (%s)",
        seconds,
        events,
        reason,
        detail,
        extra=log_fields(
            event="stream_closed",
            duration_s=round(seconds, 3),
            events=events,
            reason=reason,
            channels=channels,
        ),
    )
