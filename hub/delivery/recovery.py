"""What a live path does after a reconnect, and how it notices a lost last event.

After a shard's connection broke, each of its channels' history is read after what the
node had seen of it (:attr:`Channel.seen`) and delivered before any new live event.
A channel whose history no longer reaches back that far closes its streams: their
clients come back with their cursor and get ``hub.reset``. A channel whose history ends
before what the node had seen lost events in a failover: the range is recorded, so that
every client resuming from inside it gets ``hub.reset`` too.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.sse import retry_frame
from hub.errors import BackendUnavailable
from hub.store import ZERO, Event, Key, LiveConnection, Store, format_id

__all__ = ["Recovering", "check_positions", "recover"]

logger = logging.getLogger("hub")

#: Seconds an event may take from publish to this node before the position check
#: counts it as missed (capped at half the check interval).
POSITION_GRACE = 2.0


class Recovering(Protocol):
    """What recovery needs of the live path it catches up (a ``LivePath``)."""

    store: Store
    settings: Settings

    def channels(self) -> list[Channel]: ...

    def deliver(self, event: Event, channel: Channel) -> None: ...


async def recover(live: Recovering, channels: list[Channel], now_ms: int) -> None:
    """Deliver, in order, what was published on ``channels`` after each one's ``seen``
    (``now_ms``: the shard's time, read once their subscriptions were confirmed)."""
    if not channels:
        return
    store, settings = live.store, live.settings
    ttl_ms = int(settings.history_ttl * 1000)
    horizon = now_ms - ttl_ms if ttl_ms else None
    exact = [c for c in channels if not c.wide and c.seen is not None]
    afters = {c.name: c.seen for c in exact if c.seen is not None}
    await _note_losses(live, exact, horizon)
    by_name = {c.name: c for c in exact}
    recovered = 0
    gaps: list[str] = []
    if by_name:
        reader = store.history(
            list(by_name),
            min(afters.values()),
            expired_before=horizon,
            dedupe=False,
            afters=afters,
        )
        closed = 0
        async for event in reader:
            closed = _close_gaps(live, by_name, reader.gaps + reader.lost, closed)
            channel = by_name[event.via]
            channel.seen = max(channel.seen or ZERO, event.key)
            live.deliver(event, channel)
            recovered += 1
        _close_gaps(live, by_name, reader.gaps + reader.lost, closed)
        gaps = reader.gaps + reader.lost
    for channel in [c for c in channels if c.wide and c.seen is not None]:
        recovered += await _recover_wide(live, channel, horizon)
    if recovered or gaps:
        logger.warning(
            "recovered %d events published while the live connection was down%s",
            recovered,
            f"; history too short for {gaps}" if gaps else "",
        )


async def _recover_wide(live: Recovering, channel: Channel, horizon: int | None) -> int:
    """A wide channel's events after its ``seen``: every channel of its partitions that
    the index says may have some."""
    assert channel.seen is not None
    after = channel.seen
    names = await live.store.active_channels(channel.partitions, after[0])
    if not names:
        return 0
    reader = live.store.history(names, after, expired_before=horizon, dedupe=False)
    recovered = 0
    async for event in reader:
        live.deliver(event, channel)
        recovered += 1
    if reader.gaps or reader.lost:
        # What was trimmed is gone with its topics: every wide stream comes back (with its
        # Last-Event-ID) and gets the door's answer for an id that is too old.
        for sub in list(channel.later):
            sub.close("gap", final=retry_frame(live.settings.retry_ms))
    return recovered


async def _note_losses(live: Recovering, channels: list[Channel], horizon: int | None) -> None:
    """Channels whose history ends before the last event this node saw of them: Redis
    lost events (a failover to a replica that had not received them, or a restart)."""
    seen_events = [c for c in channels if c.seen is not None and c.seen[2] != 0]
    if not seen_events:
        return
    newest = await live.store.newest([c.name for c in seen_events])
    for channel, last in zip(seen_events, newest, strict=True):
        seen = channel.seen
        assert seen is not None
        if last is not None and last >= seen:
            continue
        if last is None and horizon is not None and seen[0] < horizon:
            continue  # expired with HUB_HISTORY_TTL, as it should
        logger.warning(
            "Redis lost events of %r up to %s that this node had delivered (failover or "
            "restart); clients resuming from before it get hub.reset",
            channel.name,
            format_id(seen),
        )
        await live.store.record_loss(channel.name, last or ZERO, seen)


def _close_gaps(live: Recovering, by_name: dict[str, Channel], gaps: list[str], done: int) -> int:
    """Close the streams of channels ``gaps[done:]``, trimmed before we could read them:
    these clients reconnect and get hub.reset. Returns how many are done."""
    for name in gaps[done:]:
        channel = by_name[name]
        for sub in list(channel.subscribers):
            sub.close("gap", final=retry_frame(live.settings.retry_ms))
    return len(gaps)


async def check_positions(live: Recovering, conn: LiveConnection) -> None:
    """Notice a lost *last* event: nothing later arrives to reveal that gap.

    The newest entry of each followed channel's history must not be newer than what
    this node has seen, unless it is too recent to have arrived yet. If one is, the
    session is restarted: that resubscribes (a wedged subscription is fixed too) and
    recovers everything after what was seen, in order.
    """
    channels = [
        c
        for c in live.channels()
        if c.session is conn and c.followed() and not c.wide and c.seen is not None
    ]
    if not channels:
        return
    now_ms = await conn.probe()
    lasts = await live.store.newest([c.name for c in channels])
    grace = int(min(POSITION_GRACE, live.settings.position_check / 2) * 1000)
    missed = []
    for channel, newest in zip(channels, lasts, strict=True):
        seen: Key | None = channel.seen
        if newest is not None and seen is not None and newest > seen and newest[0] < now_ms - grace:
            missed.append(channel.name)
    if missed:
        raise BackendUnavailable(
            f"the live connection missed the newest event of {missed[:5]}; "
            "resubscribing and recovering"
        )
