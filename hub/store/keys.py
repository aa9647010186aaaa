"""Channel names, and every Redis key and pub/sub channel name the hub uses.

The key schema (documented in the README for publishers in other languages):

- ``{prefix}clock``: hash ``ms``, ``n`` (the last id handed out), ``since`` (when this
  Redis started keeping hub history, in ms: a cursor older than that predates it).
- ``{prefix}stream:{channel}``: the channel's history, a Redis Stream whose entry ids are
  the event ids; fields ``e`` (event type), ``d`` (data), ``p`` (the previous event id on
  this channel, empty for the first), and ``s`` (the publisher's token subject) on events
  published through ``/publish`` with authorization on.
- ``{prefix}live:{channel}``: pub/sub channel that carries each new event to hub nodes.
- ``{prefix}log``: every event of every channel, in id order (capped at
  ``HUB_LOG_SIZE``): what Mercure subscribers replay, since a URI-template selector
  cannot name its channels in advance. Fields ``c`` (channels, space-separated), ``e``,
  ``d``, ``m`` (the Mercure id its publisher chose, or empty), ``r`` (retry), ``x``
  (``1`` for a private event).
- ``{prefix}mercure-ids``: hash from publisher-chosen Mercure ids to event ids.
- ``{prefix}mercure:{channel}``: pub/sub carrying each event, with its Mercure fields,
  to nodes with Mercure subscribers of that exact topic.
- ``{prefix}mercure-all``: pub/sub carrying every event to nodes that have URI-template
  (or ``*``) subscribers, and only to those.
- ``{prefix}worker:{name}:...``: a worker's own keys (the ``llm`` worker's per-subject
  question counts: ``{prefix}worker:llm:asked:{subject}:{minute}``).
- ``{prefix}subscriptions:{node}``: hash of one node's Mercure subscriptions (id ->
  JSON), expiring when the node stops its heartbeat; ``{prefix}subscription-nodes``:
  sorted set of nodes by the time their entries expire.
- ``{prefix}rate:{who}``: one publisher's ``HUB_PUBLISH_RATE`` allowance (``sub:<subject>``
  or ``addr:<address>``), a timestamp in ms (``lua/rate.lua``); it expires when full.
"""

from __future__ import annotations

from collections.abc import Iterable

from hub.errors import BadRequest, Forbidden

__all__ = [
    "MAX_CHANNEL_BYTES",
    "RESERVED_TOPICS",
    "Keys",
    "check_channel",
    "check_channels",
    "check_event_type",
    "refuse_reserved",
]

MAX_CHANNEL_BYTES = 256
MAX_EVENT_TYPE_BYTES = 128
#: Topics containing this are the hub's own (Mercure subscription events): no client
#: publishes to them, whichever door it uses.
RESERVED_TOPICS = "/.well-known/mercure"


class Keys:
    """Builds key names under one configurable prefix."""

    def __init__(self, prefix: str = "hub:") -> None:
        self.prefix = prefix
        self.clock = f"{prefix}clock"
        self._stream = f"{prefix}stream:"
        self._live = f"{prefix}live:"
        self.log = f"{prefix}log"
        self.mercure_ids = f"{prefix}mercure-ids"
        self.mercure_all = f"{prefix}mercure-all"
        self._mercure = f"{prefix}mercure:"
        self.subscription_nodes = f"{prefix}subscription-nodes"

    def stream(self, channel: str) -> str:
        return self._stream + channel

    def live(self, channel: str) -> str:
        return self._live + channel

    def mercure(self, channel: str) -> str:
        """The Mercure pub/sub name of a channel (a Mercure topic)."""
        return self._mercure + channel

    def worker(self, name: str, *parts: str) -> str:
        """A key of a worker's own (``{prefix}worker:{name}:{part}:...``)."""
        return ":".join((f"{self.prefix}worker", name, *parts))

    def subscriptions(self, node: str) -> str:
        """One node's Mercure subscriptions."""
        return f"{self.prefix}subscriptions:{node}"

    def rate(self, who: str) -> str:
        """One client's rate allowance (``who``: ``sub:<subject>`` or ``addr:<address>``)."""
        return f"{self.prefix}rate:{who}"

    def channel_of_live(self, live_name: str) -> str:
        """The channel a ``live:`` pub/sub name belongs to."""
        return live_name[len(self._live) :]


def check_channel(channel: object) -> str:
    """Return ``channel`` if it is a usable channel name, else raise :class:`BadRequest`."""
    if not isinstance(channel, str):
        raise BadRequest(f"a channel name must be a string, not {type(channel).__name__}")
    if not channel:
        raise BadRequest("a channel name must not be empty")
    try:
        size = len(channel.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(
            "a channel name contains a lone surrogate; use valid Unicode text"
        ) from None
    if size > MAX_CHANNEL_BYTES:
        raise BadRequest(
            f"channel name {channel[:40]!r}... is longer than {MAX_CHANNEL_BYTES} bytes; "
            "use a shorter name"
        )
    for char in channel:
        if char.isspace() or not char.isprintable():
            raise BadRequest(
                f"channel name {channel[:60]!r} contains whitespace or a control character; "
                "use letters, digits and punctuation such as - _ . : /"
            )
    return channel


def check_channels(channels: Iterable[object], limit: int) -> list[str]:
    """Validate a list of channel names; duplicates are dropped, order is kept."""
    seen: dict[str, None] = {}
    for channel in channels:
        seen[check_channel(channel)] = None
    if not seen:
        raise BadRequest("name at least one channel")
    if len(seen) > limit:
        raise BadRequest(
            f"{len(seen)} channels requested, at most {limit} are allowed per request "
            "(HUB_MAX_CHANNELS)"
        )
    return list(seen)


def refuse_reserved(channels: Iterable[object]) -> None:
    """Raise :class:`Forbidden` if a client names a topic reserved for the hub."""
    for channel in channels:
        if isinstance(channel, str) and RESERVED_TOPICS in channel:
            raise Forbidden(
                f"topics containing {RESERVED_TOPICS} are reserved for the hub's own "
                f"subscription events; publish to another topic ({channel[:60]!r})"
            )


def check_event_type(event: object) -> str:
    """Validate a publisher-chosen event type; ``hub.*`` is reserved for the hub's signals."""
    if event is None:
        return "message"
    if not isinstance(event, str):
        raise BadRequest(f"event must be a string, not {type(event).__name__}")
    if not event:
        raise BadRequest("event must not be empty; leave it out for the default 'message'")
    if "\r" in event or "\n" in event or "\0" in event:
        raise BadRequest("event must not contain CR, LF or NUL characters")
    try:
        size = len(event.encode())
    except UnicodeEncodeError:
        raise BadRequest(
            "event contains an unpaired UTF-16 surrogate (such as \\ud800); use valid Unicode text"
        ) from None
    if size > MAX_EVENT_TYPE_BYTES:
        raise BadRequest(f"event is longer than {MAX_EVENT_TYPE_BYTES} bytes; use a shorter type")
    if event.startswith("hub."):
        raise BadRequest("event types starting with 'hub.' are reserved for the hub's own signals")
    return event
