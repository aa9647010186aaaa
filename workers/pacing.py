"""When a worker goes next: steps at a fixed rate, and back-off between failed attempts.

Both are plain arithmetic on the event loop's clock: no sleeping here, so that the caller
can wait in a way a stop request cuts short (:meth:`workers.Worker.sleep`).
"""

from __future__ import annotations

import random

__all__ = ["FixedRate", "backoff"]


class FixedRate:
    """The start times of steps, ``interval`` seconds apart from the start of one to the
    start of the next, beginning at ``start`` (a time on the event loop's clock)."""

    def __init__(self, start: float) -> None:
        self.next_at = start

    def delay(self, interval: float, now: float) -> float:
        """Seconds from ``now`` until the next step is due, ``interval`` after the last.

        A fixed rate rather than a fixed pause, so that steps do not drift by their own
        duration; steps missed while behind (during a Redis outage) are skipped, not
        run in a burst to catch up.
        """
        self.next_at = max(self.next_at + interval, now)
        return self.next_at - now


def backoff(failures: int, retry_min: float, retry_max: float) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row.

    Exponential from ``retry_min`` up to ``retry_max``, with "equal jitter" (half fixed,
    half random) so that workers cut off by the same outage do not all come back in the
    same instant.
    """
    # The exponent is capped so that a days-long outage cannot overflow the float.
    ceiling = min(retry_max, retry_min * 2 ** min(failures - 1, 60))
    return random.uniform(ceiling / 2, ceiling)
