"""Producer workers: long-running processes that publish into the hub through Redis.

Each module ``workers.<name>`` exposes ``main(argv: list[str]) -> int`` and is run with
``hub worker <name> [options]`` or ``python -m workers.<name> [options]``. The kit they
share (options, logging, signals, retries) is in :mod:`workers.base`.
"""

from __future__ import annotations

from .base import Stopped, Worker

__all__ = ["Stopped", "Worker"]
