"""An async HTTP client for a hub: publish with ``POST /publish``, follow ``/events``.

:meth:`HubClient.subscribe` behaves like a browser's ``EventSource``: when the stream
ends or the connection breaks it comes back by itself, after the hub's ``retry:`` hint,
sending ``Last-Event-ID`` so that the hub replays exactly what was missed.

>>> async with HubClient("http://127.0.0.1:8000") as hub:
...     cursor = await hub.publish("news", "an event the subscriber has seen")
...     await hub.publish("news", {"title": "hello"}, event="update")
...     # Everything after the cursor: the "update" event, then live events.
...     async for event in hub.subscribe(["news"], last_event_id=cursor):
...         print(event.id, event.event, event.data)
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import httpx
from httpx_sse import aconnect_sse

from hub.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    HubError,
    PayloadTooLarge,
    TooManyConnections,
)

__all__ = ["Event", "HubClient"]

logger = logging.getLogger("hub.client")

#: Seconds between reconnects until the hub has sent a ``retry:`` hint (as EventSource).
DEFAULT_RETRY = 3.0
#: Longest wait between reconnects, whatever the hint or the number of failures.
DEFAULT_MAX_RETRY = 30.0
#: Floor of the backoff after repeated failures, so that ``retry: 0`` cannot mean a busy loop.
MIN_BACKOFF = 0.5
#: Answers to ``/events`` that say "not now" rather than "never": a hub or a proxy in
#: front of it that is restarting or overloaded.
_TRANSIENT = frozenset({408, 425, 429})

_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One event from a hub stream.

    ``id`` is the event's own ``id:`` field (``None`` if it had none); ``event`` is its
    type, ``"message"`` unless the publisher chose one. Types starting with ``hub.`` are
    the hub's signals: ``hub.reset`` means events may have been missed, so resync.
    """

    id: str | None
    event: str
    data: str


class HubClient:
    """Publishes to and subscribes at a hub over HTTP. Use as ``async with HubClient(url)``.

    ``token`` is sent as ``Authorization: Bearer <token>`` (for a proxy in front of the
    hub). ``timeout`` bounds connecting and each publish; ``idle_timeout`` is how long a
    stream may stay silent before it counts as dead and is reconnected (keep it above the
    hub's ``HUB_HEARTBEAT``). ``retry`` is the reconnect delay until the hub sends its own
    ``retry:`` hint, ``max_retry`` caps every delay. Pass ``http`` to use your own
    :class:`httpx.AsyncClient` (it is then not closed here).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        idle_timeout: float | None = 45.0,
        retry: float = DEFAULT_RETRY,
        max_retry: float = DEFAULT_MAX_RETRY,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"hub URL {url!r} is not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"hub URL {url!r} must look like http://host:port")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._stream_timeout = httpx.Timeout(timeout, read=idle_timeout)
        self._retry = retry
        self._max_retry = max_retry
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (unless the :class:`httpx.AsyncClient` was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def publish(
        self, channel: str | Sequence[str], data: Any, *, event: str | None = None
    ) -> str:
        """Publish ``data`` to one channel or several (as one event); return the event id.

        A ``str`` is delivered as it is, any other JSON value as compact JSON. Raises
        :class:`BadRequest` (or :class:`PayloadTooLarge`) when the hub refuses the event,
        :class:`BackendUnavailable` when the hub or its Redis cannot be reached.
        """
        body: dict[str, Any] = (
            {"channel": channel} if isinstance(channel, str) else {"channels": list(channel)}
        )
        body["data"] = data
        if event is not None:
            body["event"] = event
        event_id = await self._post_publish(body, "id")
        return str(event_id)

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish a batch of publish objects (``{"channel": "news", "data": ...}``) in one
        request; return their ids, in order. The hub checks them all first: a bad one
        raises :class:`BadRequest` naming its index (``event 3: ...``), and none is
        published. At most ``HUB_MAX_BATCH`` events (1000 by default) a request."""
        ids = await self._post_publish(list(events), "ids")
        return [str(i) for i in ids]

    async def _post_publish(self, body: Any, key: str) -> Any:
        """POST a publish body; ``key`` (``id`` or ``ids``) of the hub's answer."""
        try:
            # NaN and Infinity are not JSON: a browser's JSON.parse would choke on them.
            content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"data must be a string or a JSON value: {exc}") from exc
        endpoint = f"{self.url}/publish"
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                endpoint, content=content, headers=headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc, published_maybe=not _before_sending(exc)) from exc
        if not response.is_success:
            raise _answer_error(response, endpoint)
        try:
            answer = response.json()[key]
        except (ValueError, KeyError, TypeError):
            answer = None
        if not isinstance(answer, str if key == "id" else list):
            raise HubError(
                f"{endpoint} answered {response.status_code} without event {key}: "
                f"{_snippet(response)}; is {self.url} a hub?"
            )
        return answer

    async def subscribe(
        self, channels: str | Sequence[str], *, last_event_id: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """Yield the events of ``channels`` as they arrive, for as long as you iterate.

        With ``last_event_id`` the hub first replays every event after it (``"earliest"``:
        all it keeps). Reconnects happen by themselves and resume after the last id seen,
        so nothing is missed or repeated; a ``hub.reset`` event says that could not be
        honoured. Raises :class:`BadRequest` when the hub refuses the subscription (bad
        channel names, too many channels): that is not retried. Stop early with
        ``contextlib.aclosing`` so the connection is closed at once.
        """
        names = [channels] if isinstance(channels, str) else list(channels)
        params = [("channel", name) for name in names]
        endpoint = f"{self.url}/events"
        cursor = last_event_id or None
        retry = min(self._retry, self._max_retry)
        failures = 0
        while True:
            not_before = 0.0  # a Retry-After from a busy hub or proxy
            headers = dict(self._headers)
            if cursor:
                headers["Last-Event-ID"] = cursor
            parser = _Parser(cursor)
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    endpoint,
                    params=params,
                    headers=headers,
                    timeout=self._stream_timeout,
                ) as source:
                    response = source.response
                    status = response.status_code
                    if status != 200:
                        await response.aread()
                        error = _answer_error(response, endpoint)
                        if not _transient(status):
                            # Retrying cannot help: the hub refuses this very request.
                            if 400 <= status < 500 and not isinstance(error, BadRequest):
                                error = BadRequest(str(error))
                            raise error
                        failures += 1
                        not_before = _retry_after(response)
                        why = str(error)
                    else:
                        _check_event_stream(response, endpoint)
                        failures = 0
                        async with aclosing(_lines(response.aiter_text())) as lines:
                            async for line in lines:
                                event = parser.feed(line)
                                if event is not None:
                                    yield event
                        why = "the hub ended the stream"
                        if parser.note:
                            why += f" ({parser.note})"
            except httpx.TransportError as exc:
                failures += 1
                what = "could not reach" if _before_sending(exc) else "lost the connection to"
                why = f"{what} the hub at {self.url} ({_detail(exc)})"
            # The cursor moves at block ends only: a block cut short comes again in the replay.
            cursor = parser.last_event_id
            if parser.retry is not None:
                retry = min(parser.retry / 1000, self._max_retry)
            delay = max(_reconnect_delay(retry, failures, self._max_retry), not_before)
            delay = min(delay, self._max_retry)
            log = logger.warning if failures else logger.info
            log("%s; reconnecting in %.1fs", why, delay)
            await anyio.sleep(delay)

    def _unreachable(self, exc: httpx.TransportError, *, published_maybe: bool) -> HubError:
        if published_maybe:
            return BackendUnavailable(
                f"lost the connection to the hub at {self.url} before it answered "
                f"({_detail(exc)}); the event may or may not have been published"
            )
        return BackendUnavailable(
            f"could not reach the hub at {self.url} ({_detail(exc)}); nothing was published. "
            "Check that the hub is running and that the URL is right."
        )


class _Parser:
    """The event-stream interpretation from the HTML spec, line by line.

    Not httpx-sse's decoder: it dispatches an empty ``message`` for every block without
    ``data:`` once an id was seen (each heartbeat comment) and for the ``retry:`` preamble.
    """

    def __init__(self, last_event_id: str | None) -> None:
        #: The cursor to resume from; it moves when a block ends, never in the middle of one.
        self.last_event_id = last_event_id
        #: The last ``retry:`` hint, in milliseconds.
        self.retry: int | None = None
        #: The last comment other than the hub's routine ones (the hub says why it closes).
        self.note: str | None = None
        # Starts at the cursor, not empty: an event without id must not erase where we are.
        self._id_buffer = last_event_id or ""
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """Take one line (without its line break); return an event when one is complete."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            comment = line[1:].strip()
            if comment not in ("", "connected", "heartbeat"):
                self.note = comment
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id_buffer or None
        event_id, event_type, data = self._id, self._event, self._data
        self._id, self._event, self._data = None, "", []
        if not data:
            return None
        return Event(event_id or None, event_type or "message", "\n".join(data))


async def _lines(chunks: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Split text into lines at CRLF, LF or CR, as SSE does (``str.splitlines`` would also
    split at characters such as U+2028 that may be inside data)."""
    pending = ""
    first = True
    async for chunk in chunks:
        if first and chunk:
            chunk = chunk.removeprefix("\ufeff")
            first = False
        text = pending + chunk
        # A CR at the end may be the first half of a CRLF that the next chunk completes.
        held_cr = text.endswith("\r")
        if held_cr:
            text = text[:-1]
        lines = _NEWLINE.split(text)
        pending = lines.pop() + ("\r" if held_cr else "")
        for line in lines:
            yield line
    # Whatever is pending at the end is an unfinished block: the spec discards it.


def _reconnect_delay(retry: float, failures: int, cap: float) -> float:
    """The hub's hint after a stream ended or one failed attempt; doubled for each further
    failure in a row, so a hub that is down is not hammered. Up to 20% jitter on top, so
    clients cut off together do not all come back in the same instant."""
    delay = retry
    if failures > 1:
        delay = max(retry, MIN_BACKOFF) * 2 ** min(failures - 1, 16)
    return min(delay * random.uniform(1.0, 1.2), cap)


def _transient(status: int) -> bool:
    return status >= 500 or status in _TRANSIENT


def _check_event_stream(response: httpx.Response, endpoint: str) -> None:
    content_type = response.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "text/event-stream":
        raise HubError(
            f"{endpoint} answered with {content_type or 'no content type'}, not an event "
            "stream; is the URL a hub's?"
        )


def _answer_error(response: httpx.Response, endpoint: str) -> HubError:
    """The hub's exception for an error answer, carrying the hub's own message."""
    status = response.status_code
    message: object = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message")
    if not isinstance(message, str) or not message:
        message = f"{response.reason_phrase or 'error'}: {_snippet(response)}"
        if status in (404, 405):
            message += "; is the URL a hub's?"
    text = f"{message} (HTTP {status} from {endpoint})"
    if status == 413:
        return PayloadTooLarge(text)
    if status == 400:
        return BadRequest(text)
    if status == 503:
        if isinstance(body, dict) and body.get("error") == TooManyConnections.code:
            return TooManyConnections(text)
        return BackendUnavailable(text)
    return HubError(text)


def _retry_after(response: httpx.Response) -> float:
    """Seconds from a ``Retry-After: <seconds>`` header; 0 without one (or with a date)."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else 0.0


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return repr(text[:200]) if text else "(empty body)"


def _before_sending(exc: httpx.TransportError) -> bool:
    """True when the request surely did not reach the hub (so nothing was published)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol))


def _detail(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
