"""The wide channels: every event of some partitions, for Mercure subscribers of patterns.

A Mercure subscriber of a URI template, a URL Pattern or ``*`` cannot name its channels
in advance, so while one is open its node receives every event. On one Redis that costs
publishes nothing: the node PSUBSCRIBEs to every channel's live name, and Redis matches
the pattern only for nodes that asked. On a Redis Cluster pattern subscriptions do not
see sharded messages, so each publish also goes to its partition's firehose
(``{prefix}{<tag>}:all``), and the node subscribes to the firehoses of every partition,
each on its shard. Either way a wide stream attaches to the wide channels under the
name ``""`` and takes events in key order.
"""

from __future__ import annotations

from hub.delivery.channel import Channel
from hub.store import PARTITIONS, Keys

__all__ = ["Wide"]


class Wide:
    """Which pub/sub names carry every event, and the channels that stand for them."""

    def __init__(self, keys: Keys, *, sharded: bool) -> None:
        #: True on one Redis: one pattern subscription; False: a firehose per partition.
        self.pattern = not sharded
        self._pattern = keys.live_pattern.encode()
        self._firehoses = {keys.firehose(p).encode(): p for p in range(PARTITIONS)}

    def names(self) -> list[bytes]:
        """The pub/sub names (or the pattern) a wide stream attaches to."""
        return [self._pattern] if self.pattern else list(self._firehoses)

    def channel(self, live: bytes) -> Channel:
        """A new wide channel for ``live`` (the pattern, or a partition's firehose)."""
        if live == self._pattern:
            return Channel("", live, tuple(range(PARTITIONS)), wide=True)
        return Channel("", live, (self._firehoses[live],), wide=True)

    def pattern_channel(self, channels: dict[bytes, Channel]) -> Channel | None:
        """The one wide channel of a Redis that is not a cluster, if anyone follows it."""
        return channels.get(self._pattern)
