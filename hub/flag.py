"""A flag coroutines can wait on: :class:`asyncio.Event`, without its cost while unused.

An ``asyncio.Event`` makes its deque of waiters when it is made, and an empty deque
takes about 0.7 KiB. Every idle stream had three (its connection's flow control, its
request cycle's message event, its channel's confirmation), and hardly any of them is
ever waited on: 2.2 KiB of each stream's ~14 KiB (tracemalloc, 2,000 streams). A
:class:`Flag` makes its deque on the first wait.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Literal

__all__ = ["Flag"]

#: The waiters of every flag nobody waited on yet: ``set()`` iterates it, nobody adds.
_NONE: Any = ()


class Flag(asyncio.Event):
    """An :class:`asyncio.Event` (a drop-in) whose waiters' deque is made on demand."""

    def __init__(self) -> None:
        # Not the base's __init__: that is where the deque is made. These two are all
        # of its state (CPython 3.10 to 3.13).
        self._waiters = _NONE
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        if self._waiters is _NONE:
            self._waiters = collections.deque()
        return await super().wait()
