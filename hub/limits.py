"""The process's open-files limit: raised at start-up as far as the system allows.

Every stream holds a file descriptor, and the usual soft limit (1024) is far below
``HUB_MAX_CONNECTIONS``: past it, accepting fails with "Too many open files" while the
hub believes it has room. The soft limit may be raised up to the hard limit without
privileges, so the hub does that and logs what it got; when even the hard limit is too
low it says so, and what to change.
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

__all__ = ["RESERVED_FILES", "raise_open_files_limit"]

logger = logging.getLogger("hub")

#: Descriptors a process needs besides its streams: the listening sockets, Redis
#: connections, publishers' and probes' connections, log files.
RESERVED_FILES = 100


def raise_open_files_limit(max_connections: int) -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one, log the outcome, warn when it
    is below what ``max_connections`` streams need; the limit now, ``None`` if unknown."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _system_maximum()
    if target is not None and (soft == resource.RLIM_INFINITY or soft >= target):
        target = None
    if target is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning(
                "could not raise the open-files limit from %d to %d: %s", soft, target, exc
            )
        else:
            logger.info("open-files limit raised from %d to %d (the hard limit)", soft, target)
            soft = target
    else:
        logger.info("open-files limit: %s", _shown(soft))
    needed = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "the open-files limit (%d) is too low for HUB_MAX_CONNECTIONS=%d: each stream "
            "holds a file descriptor, so connections will fail with 'Too many open files'. "
            "Raise the hard limit to at least %d (LimitNOFILE= in a systemd unit, "
            "--ulimit nofile=%d:%d for docker run, ulimits.nofile in docker compose, "
            "ulimit -Hn in a shell), or lower HUB_MAX_CONNECTIONS to %d",
            soft,
            max_connections,
            needed,
            needed,
            needed,
            max(1, soft - RESERVED_FILES),
        )
    return soft


def _system_maximum() -> int | None:
    # An unlimited hard limit still cannot exceed the kernel's per-process maximum.
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None


def _shown(limit: int) -> str:
    return "unlimited" if resource is not None and limit == resource.RLIM_INFINITY else str(limit)
