"""The store wing: everything that talks to Redis.

The rest of the hub uses :class:`Store` (publish, history, live connections, the
partitions' marks, the Mercure index) and the names below; it never holds a Redis
client, and it sees hub errors only (:mod:`hub.store.failures`). Importing this package
loads no web stack.
"""

from hub.store.backend import Backend
from hub.store.calls import Extra
from hub.store.history import HistoryReader
from hub.store.ids import (
    ZERO,
    EventId,
    Key,
    check_chosen_id,
    cut,
    format_id,
    format_key,
    parse_id,
)
from hub.store.keys import (
    PARTITIONS,
    Keys,
    check_channel,
    check_channels,
    check_event_type,
    partition_of,
)
from hub.store.publisher import Publisher, SyncPublisher
from hub.store.pubsub import LiveConnection
from hub.store.records import Event, entry_event, live_event
from hub.store.store import Store

__all__ = [
    "PARTITIONS",
    "ZERO",
    "Backend",
    "Event",
    "EventId",
    "Extra",
    "HistoryReader",
    "Key",
    "Keys",
    "LiveConnection",
    "Publisher",
    "Store",
    "SyncPublisher",
    "check_channel",
    "check_channels",
    "check_chosen_id",
    "check_event_type",
    "cut",
    "entry_event",
    "format_id",
    "format_key",
    "live_event",
    "parse_id",
    "partition_of",
]
