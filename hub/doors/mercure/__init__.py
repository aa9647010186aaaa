"""The Mercure door: the protocol as Mercure hub v0.24 speaks it, onto the same broker."""

from hub.doors.mercure.endpoints import MERCURE

__all__ = ["MERCURE"]
