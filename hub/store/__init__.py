"""The store wing: everything that talks to Redis.

The rest of the hub uses :class:`Store` (publish, clock, history, live messages, the
Mercure log) and the names below; it never holds a Redis client, and it sees hub
errors only (:mod:`hub.store.failures`). Importing this package loads no web stack.
"""

from hub.store.backend import Backend
from hub.store.history import Clock, Entry, HistoryReader
from hub.store.ids import EventId, check_chosen_id, format_id, parse_id
from hub.store.keys import Keys, check_channel, check_channels, check_event_type
from hub.store.publisher import Extra, Publisher, SyncPublisher
from hub.store.pubsub import LiveConnection
from hub.store.records import Update
from hub.store.store import Follower, Store

__all__ = [
    "Backend",
    "Clock",
    "Entry",
    "EventId",
    "Extra",
    "Follower",
    "HistoryReader",
    "Keys",
    "LiveConnection",
    "Publisher",
    "Store",
    "SyncPublisher",
    "Update",
    "check_channel",
    "check_channels",
    "check_chosen_id",
    "check_event_type",
    "format_id",
    "parse_id",
]
