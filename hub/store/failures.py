"""Redis errors become hub errors here, and only here.

Everything above the store wing sees :class:`hub.errors.BackendUnavailable` (retry
later), :class:`hub.errors.Conflict` or :class:`hub.errors.HubError`, never an
exception of redis-py: a wing that wants to survive Redis failing needs to know one
exception, and a message that says what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from hub.errors import BackendUnavailable, Conflict, HubError
from hub.store.lane import InFlightLost

__all__ = ["FAILURES", "batch_failure", "publish_failure", "read_failure", "translated"]

#: What a call into Redis may raise before translation: redis-py's errors, and the
#: socket's own on the hub's raw connections.
FAILURES = (RedisError, OSError)


def publish_failure(exc: RedisError, where: str) -> HubError:
    """The hub error for a publish script call that failed with ``exc``."""
    passing = (ReadOnlyError, OutOfMemoryError, BusyLoadingError)
    if isinstance(exc, passing) or str(exc).startswith("NOREPLICAS"):
        # A replica after a failover, a full Redis, Redis loading its data after a
        # restart, or a master without enough replicas (min-replicas-to-write): passing
        # states worth a retry.
        return BackendUnavailable(f"Redis at {where} cannot take writes now ({exc}); retry")
    if isinstance(exc, (AskError, ClusterDownError, TryAgainError)):
        # The hub's slot moved or is moving (a cluster failover or migration; MOVED
        # is a kind of ASK): nothing ran, and the
        # connection that was told so is dropped, so a retry finds the new owner.
        return BackendUnavailable(
            f"the Redis Cluster at {where} moved the hub's slot ({exc}); nothing was "
            "published, retry"
        )
    if isinstance(exc, ResponseError) and str(exc).startswith("HUBCONFLICT"):
        return Conflict(
            f"that id is taken: {str(exc).removeprefix('HUBCONFLICT ')}; every update "
            "needs an id of its own (or none, and the hub makes one)"
        )
    if isinstance(exc, ResponseError) and not isinstance(exc, NoScriptError):
        return HubError(f"Redis refused the publish script at {where}: {exc}")
    if isinstance(exc, InFlightLost):
        return BackendUnavailable(
            f"the connection to Redis at {where} broke after the publish was sent ({exc}); "
            "the event may or may not have been published"
        )
    if isinstance(exc, RedisTimeoutError):
        return BackendUnavailable(
            f"Redis at {where} did not answer in time ({exc}); the event may or may not "
            "have been published"
        )
    return BackendUnavailable(
        f"Redis at {where} is unreachable ({exc}); nothing was published. "
        "Check that Redis is running and HUB_REDIS_URL points at it, then retry."
    )


def batch_failure(
    replies: Sequence[object], failure: RedisError | None, where: str, total: int
) -> HubError:
    """The hub error for a batch of publish script calls that did not all succeed.

    ``replies`` are the replies that came, in order: an id, an error (that event was
    not published), or ``None`` (no reply: it may or may not have been); when
    ``failure`` ended the batch early, the events after the replies are unknown too.
    The message says which events were published, so that a retry can skip them."""
    published = [i for i, r in enumerate(replies) if r is not None and not isinstance(r, Exception)]
    errors = [r for r in replies if isinstance(r, RedisError)]
    unknown = total - len(replies) + sum(r is None for r in replies)
    cause = failure if failure is not None else errors[0]
    base = publish_failure(cause, where)
    note = f"{len(published)} of {total} events were published"
    if published:
        note += f" (index {_ranges(published)})"
    if unknown:
        note += f", {unknown} may or may not have been"
    return type(base)(f"{note}: {base}")


def _ranges(indexes: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for i in indexes:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def read_failure(exc: BaseException, doing: str) -> BackendUnavailable:
    """The hub error for a read or bookkeeping call that failed with ``exc``."""
    what = str(exc).rstrip(".").removeprefix("cannot connect to Redis: ") or type(exc).__name__
    if isinstance(exc, (RedisConnectionError, ConnectionRefusedError)):
        return BackendUnavailable(
            f"cannot connect to Redis while {doing}: {what}. Check that Redis is running "
            "and HUB_REDIS_URL points at it; clients retry by themselves"
        )
    return BackendUnavailable(
        f"Redis failed while {doing}: {what}. Check that Redis is "
        "running and HUB_REDIS_URL points at it; clients retry by themselves"
    )


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Raise Redis and socket errors inside as :class:`BackendUnavailable`."""
    try:
        yield
    except FAILURES as exc:
        raise read_failure(exc, doing) from exc
