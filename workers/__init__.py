"""Producer workers: long-running processes that publish into the hub through Redis.

Each worker ``workers.<name>`` (a module or a package) exposes
``main(argv: list[str]) -> int`` and is run with ``hub worker <name> [options]`` or
``python -m workers.<name> [options]``: :mod:`workers.ticker`, :mod:`workers.llm`.

The rest is the kit they share, re-exported here:

- :mod:`workers.base`: the :class:`Worker` base class;
- :mod:`workers.options`: option types, and the options every worker has;
- :mod:`workers.run`: the run loop, and stopping on signals (:class:`Stopped`);
- :mod:`workers.pacing`: steps at a fixed rate, back-off between retries;
- :mod:`workers.launch`: from a command line to an exit code.

A worker is a loop of steps: :meth:`Worker.step` does one unit of work (typically one
publish), then the worker waits until ``interval`` seconds after the step began, and so on
until ``max_steps`` steps are done or a SIGTERM/SIGINT arrives. The kit takes care of:

- configuration: ``--redis-url`` / ``HUB_REDIS_URL`` (required), and the key prefix,
  history size and other publish settings from ``HUB_*`` via :meth:`hub.Settings.from_env`;
- shutdown: the first SIGTERM/SIGINT lets the current step finish (a step that is
  waiting to retry a publish is abandoned instead), then the publisher is closed and the
  process exits 0; a second signal stops at once;
- Redis outages: :meth:`Worker.publish` retries on :class:`hub.BackendUnavailable` with
  exponential back-off and jitter, logging each failure, instead of crashing;
- logging: the hub's (:mod:`hub.logs`): one line per record with ``key=value`` fields,
  or one JSON object per line with ``--log-json`` (or ``HUB_LOG_JSON=1``).

Exit codes: 0 done or stopped by a signal, 1 crashed, 2 bad options or configuration,
128 + N stopped forcibly by a second signal N.

A worker that is not a fixed-rate loop (a consumer that blocks reading requests) sets
``interval = 0`` and blocks inside :meth:`Worker.step`; :meth:`Worker.setup`,
:meth:`Worker.finish` and :meth:`Worker.close` let it start and stop background work,
and overriding :meth:`Worker.create` gives it the Redis client and the settings.

A minimal worker::

    class Hello(Worker):
        name = "hello"

        async def step(self, n: int) -> None:
            await self.publish("greetings", {"n": n}, event="hello")

    def main(argv: list[str] | None = None) -> int:
        return Hello.main(argv)
"""

from __future__ import annotations

from .base import Worker
from .launch import EXIT_CRASHED, EXIT_OK, EXIT_USAGE
from .options import channel_name, non_negative_int, positive_float, positive_int
from .run import Stopped

__all__ = [
    "EXIT_CRASHED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Stopped",
    "Worker",
    "channel_name",
    "non_negative_int",
    "positive_float",
    "positive_int",
]
