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

Secrets never reach a log line: tokens in ``authorization=`` and ``access_token=``
query parameters (the only way an EventSource can send one), ``password=`` options,
``Bearer`` credentials and anything shaped like a JWT are replaced by ``[redacted]`` in
every record that goes through the hub's handlers (:class:`RedactSecrets`): uvicorn's
access log included.

Workers, which run no web server, use this module too: it must import nothing of the
web stack (starlette, uvicorn, jwt, prometheus_client).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "RedactSecrets",
    "TextFormatter",
    "configure_logging",
    "level_number",
    "log_fields",
    "log_stream_closed",
    "redact_handlers",
    "redact_secrets",
]

LOG_FORMATS = ("text", "json")
#: The level names to offer; the other names ``logging`` knows (``warn``) work as well.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: The keys of every JSON line, in this order; a field cannot take one of them over.
JSON_KEYS = ("ts", "level", "logger", "pid", "msg", "exc")

#: One line per closed stream, at INFO.
connections_logger = logging.getLogger("hub.connections")


#: What a secret looks like in a log line: the value of a token or password parameter
#: (also percent-encoded, in a URL logged inside another URL), a Bearer credential, a JWS.
_SECRET = re.compile(
    r"(?i)(?P<name>(?:authorization|access_token|password)(?:=|%3D))[^&\s\"'<>]+"
    r"|(?P<bearer>\bBearer\s+)(?!<)[^\s\"',;]+"
    r"|\beyJ[\w-]*\.[\w-]+\.[\w-]*"
)
#: What cannot appear in a line without a secret in it (checked before the pattern).
_MARKERS = ("uthorization", "ccess_token", "assword", "earer", "eyJ")
REDACTED = "[redacted]"


def redact_secrets(text: str) -> str:
    """``text`` with every token (query parameter, Bearer credential, JWT) replaced."""
    if not any(marker in text for marker in _MARKERS):
        return text
    return _SECRET.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    prefix = match.group("name") or match.group("bearer") or ""
    return prefix + REDACTED


class RedactSecrets(logging.Filter):
    """Takes secrets out of a record before any handler formats it: its message, its
    arguments (uvicorn's access log formats them itself), its fields, its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted_arg(v) for k, v in record.args.items()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: _redacted_arg(v) for k, v in fields.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        return True


def _redacted_arg(value: Any) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, str):
        return redact_secrets(value)
    shown = str(value)
    redacted = redact_secrets(shown)
    # Only when it held a secret: other objects keep their type for %r, %d and friends.
    return value if redacted == shown else redacted


def redact_handlers(*logger_names: str) -> None:
    """Add :class:`RedactSecrets` to every handler of the root logger and of these
    loggers (uvicorn's, which write through handlers of their own in text mode)."""
    for name in ("", *logger_names):
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())


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
            # exc_text when set: RedactSecrets has cleaned it.
            line["exc"] = record.exc_text or self.formatException(record.exc_info)
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
    handler.addFilter(RedactSecrets())
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
