"""What one publish asks of Redis: the publish script's keys and arguments, per partition.

A publish is checked here (channel names, event type, size, the Mercure fields), then
becomes one script call: on a Redis Cluster one per partition its channels fall into,
each atomic in its own slot (an event of several partitions is stored once in each:
hub/store/records.py), on any other Redis one for all (where one call keeps it one
event with one id, in its place among the others of every channel). Most publishes name
one channel and become one call with no options, the script's fast path. The upkeep of
history (trimming it to ``HUB_HISTORY_SIZE``, keeping the Mercure index fresh) rides
along on every so many publishes of a channel instead of on each (:class:`Upkeep`): it
is most of what a publish used to cost Redis.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.config import Settings
from hub.errors import BadRequest, HubError, PayloadTooLarge
from hub.store.batch import PublishItem, of_event, read_items
from hub.store.ids import check_chosen_id, key_suffix
from hub.store.keys import Keys, check_channel, check_channels, check_event_type, partition_of

__all__ = ["Call", "Calls", "Extra", "Publishable", "Upkeep", "encode_data"]

#: One event of a batch: a publish object as the HTTP API takes it, or one already read.
Publishable = Mapping[str, Any] | PublishItem

#: Milliseconds after a channel's newest event that its Mercure index score reaches: a
#: publisher refreshes the score at least every half of this.
INDEX_AHEAD_MS = 60_000


def encode_data(data: Any) -> bytes:
    """A ``str`` is sent as it is, ``bytes`` too; any other value as compact JSON."""
    if isinstance(data, bytes):
        return data
    try:
        if isinstance(data, str):
            return data.encode("utf-8")
        # NaN and Infinity are not JSON: a browser's JSON.parse would reject the event.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "data contains a lone surrogate (not valid Unicode text); fix its encoding"
        ) from None
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"data must be a string or a JSON value: {exc}") from exc


@dataclass(frozen=True)
class Extra:
    """What a publish may carry beyond channels, data and type (the Mercure door's
    fields; a native publish may be private too)."""

    #: Delivered only to subscribers whose subscribe claims match one of its channels.
    private: bool = False
    #: The publisher's own id for the event (Mercure ``id``): sent to Mercure
    #: subscribers as the SSE ``id:`` and accepted back as their ``Last-Event-ID``.
    mercure_id: str | None = None
    #: Reconnect delay in ms sent along with the event to Mercure subscribers.
    retry: int | None = None
    #: False: announced to live subscribers but kept in no history (the Mercure
    #: subscription events, one channel each, would pile up keys otherwise).
    kept: bool = True
    #: The publisher's verified token subject, kept with the event in each channel's
    #: history (field ``s``): a worker reading requests can count them per subject.
    subject: str | None = None


@dataclass(slots=True)
class Call:
    """One call of the publish script: the part of an event in one partition (not
    frozen, for the reason :class:`~hub.store.batch.PublishItem` is not)."""

    keys: list[str]
    args: list[bytes | str | int]
    partition: int
    #: ``.<h>``: appended to the entry id the script returns, it makes the event id.
    suffix: bytes


#: Channels whose names :class:`Calls` checked and whose keys it built, remembered up to
#: this many (then it starts over).
ROUTES_AT_MOST = 16_384


@dataclass(slots=True)
class _Route:
    """What every publish to one channel needs of its name."""

    stream: str
    live: str
    partition: int
    suffix: bytes
    #: The channel's name in its live messages' head (on a cluster), or "".
    named: str
    #: What the fast path's arguments end with: ``fire`` and the firehose, on a cluster.
    tail: list[str]


def _plain(extra: Extra) -> bool:
    """Whether a publish with ``extra`` takes none of the script's options."""
    return (
        not (extra.private or extra.mercure_id or extra.retry is not None or extra.subject)
        and extra.kept
    )


class Upkeep:
    """When a publisher asks the script to trim a channel's history and to refresh the
    channel's Mercure index score: every ``HUB_HISTORY_SIZE / 10`` publishes (and, with
    ``HUB_HISTORY_TTL``, every quarter of it), and every half minute, per channel and
    publisher. History thus holds up to 10% more than its size between trims."""

    #: Channels remembered; beyond, the memory starts over (a few extra trims).
    LIMIT = 100_000

    def __init__(self, size: int, ttl_ms: int) -> None:
        self.size = size
        self.every = max(1, min(1000, size // 10))
        self._ttl_s = ttl_ms / 1000
        self._counts: dict[str, int] = {}
        self._trimmed_at: dict[str, float] = {}
        self._indexed_at: dict[str, float] = {}

    def due(self, channels: Sequence[str]) -> tuple[bool, bool]:
        """Whether this publish to ``channels`` should trim, and refresh the index."""
        now = time.monotonic()
        if len(self._counts) > self.LIMIT:
            self._counts.clear()
            self._trimmed_at.clear()
            self._indexed_at.clear()
        trim = index = False
        for channel in channels:
            count = self._counts.get(channel, 0) + 1
            aged = self._ttl_s > 0 and now - self._trimmed_at.get(channel, 0.0) > self._ttl_s / 4
            if count >= self.every or aged:
                trim = True
                count = 0
                self._trimmed_at[channel] = now
            self._counts[channel] = count
            if now - self._indexed_at.get(channel, -1e9) > INDEX_AHEAD_MS / 2000:
                index = True
                self._indexed_at[channel] = now
        return trim, index


class Calls:
    """Checks publishes and turns them into script calls (shared by both publishers)."""

    def __init__(self, settings: Settings, max_channels: int, *, cluster: bool = False) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.max_channels = max_channels
        self.cluster = cluster
        self._ttl_ms = int(settings.history_ttl * 1000)
        self.upkeep = Upkeep(settings.history_size, self._ttl_ms)
        self._routes: dict[str, _Route] = {}

    def event(
        self,
        channels: str | Sequence[str],
        data: Any,
        event: str | None,
        extra: Extra | None = None,
    ) -> list[Call]:
        """The calls that publish one event: one per partition of its channels, the
        partition of its first channel first (its id is the event's)."""
        one: object = channels
        if isinstance(channels, (list, tuple)):
            one = channels[0] if len(channels) == 1 else None
        if isinstance(one, str) and self._ttl_ms == 0 and (extra is None or _plain(extra)):
            # The common case (one channel, no options), built from what is known of the
            # channel: most of a batch's CPU in the hub went to checking the same names
            # and building the same keys again for each event.
            route = self._routes.get(one) or self._route(check_channel(one))
            event_type = "message" if event is None else check_event_type(event)
            payload = self._payload(data)
            trim, refresh = self.upkeep.due((one,))
            if not (trim or refresh):
                head = f"\n{event_type}\n{route.named}\n\n\n\n"
                args: list[bytes | str | int] = [head, event_type, payload, route.live]
                args += route.tail
                return [Call([route.stream], args, route.partition, route.suffix)]
            part = Extra() if extra is None else extra
            return [
                self._call(
                    route.partition, [one], [one], event_type, payload, part, (trim, refresh), ""
                )
            ]
        names = check_channels(
            [channels] if isinstance(channels, str) else channels, self.max_channels
        )
        event_type = check_event_type(event)
        payload = self._payload(data)
        extra = extra or Extra()
        if extra.mercure_id:
            check_chosen_id(extra.mercure_id)
        if extra.subject and any(c in extra.subject for c in "\r\n\0"):
            raise BadRequest("the token's subject must not contain CR, LF or NUL characters")
        parts: dict[int, list[str]] = {}
        if self.cluster:
            for name in names:
                parts.setdefault(partition_of(name), []).append(name)
        else:
            parts[partition_of(names[0])] = names
        split = len(parts) > 1
        token = os.urandom(6).hex() if split else ""
        calls = []
        for index, (partition, members) in enumerate(parts.items()):
            upkeep = self.upkeep.due(members) if extra.kept else (False, False)
            origin = f"{index} {token}" if split else ""
            calls.append(
                self._call(partition, members, names, event_type, payload, extra, upkeep, origin)
            )
        return calls

    def _payload(self, data: Any) -> bytes:
        payload = encode_data(data)
        if len(payload) > self.settings.max_payload:
            raise PayloadTooLarge(
                f"data is {len(payload)} bytes; the limit is {self.settings.max_payload} "
                "(HUB_MAX_PAYLOAD)"
            )
        return payload

    def _route(self, channel: str) -> _Route:
        """What every publish to ``channel`` needs of its name (checked before)."""
        if len(self._routes) >= ROUTES_AT_MOST:
            self._routes.clear()
        partition = partition_of(channel)
        keys = self.keys
        tail = ["fire", keys.firehose(partition)] if self.cluster else []
        route = _Route(
            keys.stream(channel),
            keys.live(channel),
            partition,
            key_suffix(channel),
            channel if self.cluster else "",
            tail,
        )
        self._routes[channel] = route
        return route

    def batch(self, events: Iterable[Publishable], subject: str | None = None) -> list[list[Call]]:
        """Every event of a batch checked, before any is sent; the first bad one is
        refused with its index. ``subject``: the publisher's, kept with each event."""
        calls = []
        # Two Extras serve the whole batch: building a frozen dataclass per event was
        # a tenth of the hub's CPU under batch publishes (py-spy).
        extras = (Extra(private=False, subject=subject), Extra(private=True, subject=subject))
        for index, item in enumerate(read_items(events, self.settings.max_batch)):
            try:
                calls.append(self.event(item.channels, item.data, item.event, extras[item.private]))
            except HubError as exc:
                raise of_event(index, exc) from None
        return calls

    def _call(
        self,
        partition: int,
        members: list[str],
        names: list[str],
        event_type: str,
        payload: bytes,
        extra: Extra,
        upkeep: tuple[bool, bool],
        origin: str,
    ) -> Call:
        keys = self.keys
        whole = " ".join(names) if len(names) > 1 else ""
        # A cluster's firehose messages must name the channel: its pub/sub name does not.
        named = whole or (names[0] if self.cluster else "")
        mid = extra.mercure_id or ""
        retry = "" if extra.retry is None else str(extra.retry)
        head = "\n".join(("x" if extra.private else "", event_type, named, origin, mid, retry, ""))
        args: list[bytes | str | int] = [head, event_type, payload]
        args.extend(keys.live(c) for c in members)
        options: list[bytes | str | int] = []
        if whole:
            options += ["c", whole]
        if origin:
            options += ["o", origin]
        suffix = key_suffix(members[0])
        if mid:
            options += ["m", mid, "k", suffix]
        if retry:
            options += ["r", retry]
        if extra.private:
            options += ["x", "1"]
        if extra.subject:
            options += ["s", extra.subject]
        if self.cluster:
            options += ["fire", keys.firehose(partition)]
        if not extra.kept:
            options += ["kept", "0"]
        else:
            if self._ttl_ms:
                options += ["ttl", self._ttl_ms]
            trim, refresh = upkeep
            if trim or refresh:
                options += ["names", " ".join(members)]
            if trim:
                options += ["trim", self.upkeep.size]
            if refresh:
                options += ["idx", INDEX_AHEAD_MS]
        args.extend(options)
        call_keys = [keys.stream(c) for c in members]
        if len(members) == 1 and (not options or (len(options) == 2 and options[0] == "fire")):
            # The script's fast path needs the history key alone: three fewer to send.
            return Call(call_keys, args, partition, suffix)
        owners = [partition_of(c) for c in members]
        call_keys += [keys.trimmed(p) for p in owners]
        call_keys += [keys.index(p) for p in owners]
        call_keys += [keys.chosen_ids(p) for p in owners]
        return Call(call_keys, args, partition, suffix)
