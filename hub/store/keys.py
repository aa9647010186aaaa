"""Channel names, and every Redis key and pub/sub channel name the hub uses.

The hub's keys fall into 64 partitions, each under a hash tag of its own, so that on a
Redis Cluster they spread over the shards (the tags hash into evenly spaced ranges of
slots) while everything one publish writes lives in one slot. A channel's partition is
its hash slot (Redis Cluster's: a ``{tag}`` in the channel name counts, so
``{room42}:chat`` and ``{room42}:typing`` share one) divided by 256.

The key schema (documented for publishers in other languages in docs/python.md):

- ``{prefix}{<tag>}:s:{channel}``: the channel's history, a Redis Stream; fields ``e``
  (event type), ``d`` (data), and, only where they apply: ``c`` (every channel of an
  event published to several, space-separated, in order), ``o`` (for an event whose
  channels span partitions: ``<part> <token>``), ``m`` (the Mercure id its publisher
  chose), ``r`` (retry), ``x`` (``1``: private), ``s`` (the publisher's token subject).
- ``{prefix}{<tag>}:l:{channel}``: pub/sub name that carries each new event to nodes.
- ``{prefix}{<tag>}:all``: on a Redis Cluster, every event of the partition, for nodes
  with Mercure subscribers of URI templates, URL Patterns or ``*``. (On one Redis those
  nodes PSUBSCRIBE to the live names instead: a publish costs nothing extra.)
- ``{prefix}{<tag>}:index``: sorted set of the partition's channels, scored with a time
  (ms) after their newest event: which channels a Mercure pattern subscriber replays.
- ``{prefix}{<tag>}:trimmed``: hash channel -> id of the newest event trimmed from its
  history, so that a resume from before it gets ``hub.reset``.
- ``{prefix}{<tag>}:lost``: hash channel -> ``<after> <upto>``: ids a failover lost.
- ``{prefix}{<tag>}:meta``: hash ``since`` (ms: when this Redis was first seen holding
  the partition's history; a cursor older than that predates it).
- ``{prefix}{<tag>}:ids``: hash from publisher-chosen Mercure ids to event ids.
- ``{prefix}{subs}:node:{node}`` and ``{prefix}{subs}:nodes``: the Mercure
  subscriptions registry (one node's subscriptions, id -> JSON; nodes by expiry).
- ``{prefix}worker:{name}:...``: a worker's own keys (the ``llm`` worker's per-subject
  question counts: ``{prefix}worker:llm:asked:{subject}:{minute}``).
- ``{prefix}rate:{who}``: one publisher's ``HUB_PUBLISH_RATE`` allowance (``sub:<subject>``
  or ``addr:<address>``), a timestamp in ms (``lua/rate.lua``); it expires when full.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.crc import key_slot

from hub.errors import BadRequest, ConfigError, Forbidden

__all__ = [
    "MAX_CHANNEL_BYTES",
    "PARTITIONS",
    "PARTITION_TAGS",
    "RESERVED_TOPICS",
    "Keys",
    "check_channel",
    "check_channels",
    "check_event_type",
    "check_prefix",
    "partition_of",
    "refuse_reserved",
]

MAX_CHANNEL_BYTES = 256
MAX_EVENT_TYPE_BYTES = 128
#: Topics containing this are the hub's own (Mercure subscription events): no client
#: publishes to them, whichever door it uses.
RESERVED_TOPICS = "/.well-known/mercure"

#: Partitions of the hub's keys; a cluster spreads a hub over at most this many shards.
PARTITIONS = 64
#: Partition ``p``'s hash tag: the shortest string whose slot is in ``[256p, 256p + 256)``
#: (tests/test_keys_layout.py checks them).
PARTITION_TAGS = (
    "bh", "bd", "by", "bq", "aa", "ai", "3", "ax", "c2", "ds", "b9", "b1", "b", "j", "s", "a8",
    "bi", "ba", "bx", "bp", "ad", "ah", "2", "ay", "c3", "dr", "b8", "b0", "c", "k", "r", "z",
    "bj", "bb", "ca", "bs", "ac", "ak", "1", "9", "c0", "c8", "dh", "b3", "d", "h", "q", "y",
    "bk", "bc", "bz", "br", "ab", "aj", "0", "8", "c1", "c9", "di", "b2", "a", "i", "p", "x",
)  # fmt: skip


def partition_of(channel: str) -> int:
    """The partition a channel's keys live in: its hash slot (a ``{tag}`` in the name
    counts, as in Redis Cluster) divided by 256."""
    partition = _partitions.get(channel)
    if partition is None:
        # CRC16 in Python costs more than the rest of a batched event's keys: channels
        # recur, so their partitions are remembered (a bounded number of them).
        if len(_partitions) >= _REMEMBERED:
            _partitions.clear()
        partition = key_slot(channel.encode("utf-8", "surrogatepass")) >> 8
        _partitions[channel] = partition
    return partition


#: Channels whose partition :func:`partition_of` remembers, at most.
_REMEMBERED = 16_384
_partitions: dict[str, int] = {}


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys can start with it; a hash tag in it would put every key
    of the hub in one slot of a cluster, so it is refused with a message saying so."""
    if "{" in prefix or "}" in prefix:
        raise ConfigError(
            f"the key prefix {prefix!r} holds a brace: the hub gives its keys hash tags of "
            "its own (64 partitions, spread over a cluster's shards), and a tag in the "
            "prefix would put them all in one slot. Set HUB_KEY_PREFIX=hub: (or another "
            "prefix without braces)"
        )
    return prefix


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Keys:
    """Builds key names under one configurable prefix."""

    def __init__(self, prefix: str = "hub:") -> None:
        self.prefix = check_prefix(prefix)
        self._tagged = [f"{prefix}{{{tag}}}:" for tag in PARTITION_TAGS]
        self.subscription_nodes = f"{prefix}{{subs}}:nodes"
        #: PSUBSCRIBE pattern matching every channel's live name (one Redis, not a cluster).
        self.live_pattern = f"{_glob_escape(prefix)}{{*}}:l:*"

    def partition(self, p: int) -> str:
        """The common start of partition ``p``'s keys: ``{prefix}{<tag>}:``."""
        return self._tagged[p]

    def stream(self, channel: str) -> str:
        return f"{self._tagged[partition_of(channel)]}s:{channel}"

    def live(self, channel: str) -> str:
        return f"{self._tagged[partition_of(channel)]}l:{channel}"

    def firehose(self, p: int) -> str:
        """Partition ``p``'s pub/sub name for every event (on a cluster)."""
        return self._tagged[p] + "all"

    def index(self, p: int) -> str:
        return self._tagged[p] + "index"

    def trimmed(self, p: int) -> str:
        return self._tagged[p] + "trimmed"

    def lost(self, p: int) -> str:
        return self._tagged[p] + "lost"

    def meta(self, p: int) -> str:
        return self._tagged[p] + "meta"

    def chosen_ids(self, p: int) -> str:
        return self._tagged[p] + "ids"

    def worker(self, name: str, *parts: str) -> str:
        """A key of a worker's own (``{prefix}worker:{name}:{part}:...``)."""
        return ":".join((f"{self.prefix}worker", name, *parts))

    def subscriptions(self, node: str) -> str:
        """One node's Mercure subscriptions."""
        return f"{self.prefix}{{subs}}:node:{node}"

    def rate(self, who: str) -> str:
        """One client's rate allowance (``who``: ``sub:<subject>`` or ``addr:<address>``)."""
        return f"{self.prefix}rate:{who}"

    def channel_of_live(self, live_name: bytes) -> str:
        """The channel a live pub/sub name belongs to (``...{tag}:l:<channel>``)."""
        start = live_name.index(b"}:l:", len(self.prefix)) + 4
        return live_name[start:].decode("utf-8", "surrogatepass")


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
