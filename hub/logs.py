"""Logging setup: readable text (the default) or one JSON object per line.

``HUB_LOG_FORMAT=json`` (``hub serve --log-format json``) makes every line, uvicorn's
included, a JSON object with ``ts``, ``level``, ``logger``, ``pid`` and ``msg``, plus
the structured fields a line carries: each closed stream is logged once by the
``hub.connections`` logger with ``event="stream_closed"``, ``duration_s``, ``events``,
``reason`` and ``channels``, ready for a log pipeline to aggregate.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "log_stream_closed"]

LOG_FORMATS = ("text", "json")

#: One line per closed stream, at INFO.
connections_logger = logging.getLogger("hub.connections")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` (a dict) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str, fmt: str = "text", *, several_processes: bool = False) -> None:
    """Set up the root logger on stderr. In JSON mode uvicorn's loggers go through it too
    (start uvicorn with ``log_config=None`` so that it leaves them alone)."""
    root = logging.getLogger()
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
        return
    # With several processes writing to one stream, each line says which one it is.
    who = "%(name)s[%(process)d]" if several_processes else "%(name)s"
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s {who}: %(message)s")


def log_stream_closed(
    *, seconds: float, events: int, reason: str, detail: str, channels: int
) -> None:
    """The one line per closed stream: how long it lasted, what it got, why it ended."""
    if not connections_logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "event": "stream_closed",
        "duration_s": round(seconds, 3),
        "events": events,
        "reason": reason,
        "channels": channels,
    }
    connections_logger.info(
        "stream closed after %.1fs, %d events sent: %s (%s)",
        seconds,
        events,
        reason,
        detail,
        extra={"fields": fields},
    )
