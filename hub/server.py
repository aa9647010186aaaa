"""Running the hub under uvicorn: one process, or ``workers`` processes on one port.

One process is a :class:`HubServer`: uvicorn, plus a shutdown that does not hang on open
streams. With ``Settings.workers > 1`` a supervisor starts that many of them. Each binds
the port itself with ``SO_REUSEPORT``, so the kernel spreads new connections over them,
and each has its own Redis connections (one live pub/sub connection per process, as on
separate machines). SIGTERM to the supervisor drains every worker; a worker that dies is
replaced; workers go when the supervisor goes, even if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import uvicorn
from starlette.applications import Starlette

from hub.app import create_app, drain
from hub.config import Settings
from hub.doors.jwks import check_jwks_url
from hub.errors import ConfigError
from hub.heap import settle_heap
from hub.inprocess import in_process_workers
from hub.limits import raise_open_files_limit
from hub.logs import configure_logging, redact_handlers
from hub.metrics import MULTIPROC_ENV
from hub.protocol import hub_protocol
from hub.small_posts import SmallPosts

__all__ = ["HubServer", "Supervisor", "build_server", "serve"]

logger = logging.getLogger("hub")

#: Seconds uvicorn gives open responses after the streams were ended, on shutdown.
GRACEFUL_SHUTDOWN = 10
#: Seconds the supervisor waits for its workers to exit before it kills them.
STOP_TIMEOUT = GRACEFUL_SHUTDOWN + 5
#: Seconds before a worker that died is replaced (not a tight crash loop).
RESTART_DELAY = 1.0
#: Connections the kernel may hold for the hub before it accepts them (it caps this at
#: net.core.somaxconn). When a node restarts, its clients all reconnect at once; a full
#: queue drops their SYNs, and each waits a second or more to try again.
BACKLOG = 65535
#: uvicorn's exit code for a server that could not start (bind, lifespan).
STARTUP_FAILURE = 3


class HubServer(uvicorn.Server):
    """uvicorn's server, plus: on shutdown, stop accepting, then end every SSE stream.

    uvicorn waits for open responses to finish before it runs the app's shutdown, and an
    SSE response never finishes by itself: streams are closed here, first, with a
    jittered ``retry:`` hint. ``on_started`` is called once the server accepts.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        app: Starlette,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.hub_app = app
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the signal after a graceful shutdown, so the process
                # dies of SIGTERM (exit -15) and orchestrators count a crash. A hub that
                # drained cleanly on SIGTERM exits 0.
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        drain(self.hub_app)
        await super().shutdown(sockets)


def build_server(
    settings: Settings,
    app: Starlette | None = None,
    on_started: Callable[[], None] | None = None,
    workers: Sequence[str] = (),
) -> HubServer:
    app = app or create_app(settings, services=in_process_workers(workers))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # JSON logs: uvicorn's loggers go through ours (hub.logs) instead of its own setup.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        # Request heads, the time to send them and the body, and connections per address
        # are bounded (hub/protocol.py); h11, if chosen, has its own head limit only.
        http=hub_protocol(settings),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        # SSE streams are long; a browser's reconnect must not meet a short keep-alive.
        timeout_keep_alive=30,
        backlog=BACKLOG,
    )
    SmallPosts.install(config)  # and the proxy headers (hub/forwarded.py)
    # uvicorn's text-mode handlers exist now (Config set them up): no token in any line.
    redact_handlers("uvicorn", "uvicorn.error", "uvicorn.access")
    return HubServer(config, app, on_started)


def serve(settings: Settings, workers: Sequence[str] = ()) -> int:
    """Run the hub until SIGINT/SIGTERM; return the exit code. One process, or
    ``settings.workers`` processes sharing the port under a supervisor. ``workers``:
    producer workers to run inside the (one) process (:mod:`hub.inprocess`)."""
    if workers and settings.workers > 1:
        raise ConfigError(
            "--worker runs workers inside a single hub process: leave HUB_WORKERS at 1, "
            "or run them as `hub worker NAME` next to hubs on a Redis"
        )
    check_jwks_url(settings.jwt_jwks_url)  # before logging is set up (see there)
    _configure_logging(settings)
    with _metrics_dir(settings.workers > 1):
        if settings.workers > 1:
            supervisor = Supervisor(settings)  # every setting checked first
            raise_open_files_limit(settings.max_connections)  # the workers inherit it
            return supervisor.run()
        server = build_server(settings, workers=workers)
        raise_open_files_limit(settings.max_connections)
        settle_heap()
        server.run()
    return 0


def _configure_logging(settings: Settings) -> None:
    configure_logging(
        settings.log_level, settings.log_format, several_processes=settings.workers > 1
    )


@contextlib.contextmanager
def _metrics_dir(several: bool) -> Iterator[None]:
    """prometheus-client's multiprocess directory, so that a scrape of any worker counts
    all of them (hub.metrics). Set before the workers start (they read it when they
    import prometheus-client), emptied first: values from an earlier run would count."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield
        return
    if not several:
        yield
        return
    made = tempfile.mkdtemp(prefix="hub-metrics-")
    os.environ[MULTIPROC_ENV] = made
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)


# -- several processes on one port ---------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    #: The supervisor's end of the pipe on which the worker says it is accepting.
    ready: Connection
    ready_seen: bool = False


class Supervisor:
    """Runs ``settings.workers`` hub processes on one port and keeps them running.

    A worker that exits with an error before it accepts connections is a startup
    failure (the port is taken, the app cannot start): everything stops and :meth:`run`
    returns 1. One that is killed, or dies after it served, is replaced after
    :data:`RESTART_DELAY`. On SIGTERM or SIGINT every worker gets SIGTERM, drains its
    streams and exits; a second signal makes them stop at once, and any still running
    after :data:`STOP_TIMEOUT` is killed.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise ConfigError(
                "workers > 1 needs HUB_REDIS_URL: the embedded backend lives inside one "
                "process, so workers would not see each other's events"
            )
        create_app(settings)  # a bad setting fails here, once, not once per worker
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Worker | None] = [None] * settings.workers
        self._restart_at: dict[int, float] = {}
        self._signals: list[int] = []

    def run(self) -> int:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in range(len(self._slots)):
                self._start(slot)
            logger.info(
                "starting %d workers on http://%s:%d (SO_REUSEPORT)",
                len(self._slots),
                self.settings.host,
                self.settings.port,
            )
            failed = False
            while not self._signals and not failed:
                failed = not self._watch()
            clean = self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failed:
            return 1
        if not clean:
            return 1
        # The same codes as one process: 0 after SIGTERM, 130 after Ctrl-C.
        return 130 if self._signals[0] == signal.SIGINT else 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _start(self, slot: int) -> None:
        ours, theirs = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, theirs, os.getpid()),
            name=f"hub-worker-{slot}",
        )
        process.start()
        theirs.close()
        self._slots[slot] = _Worker(process, ours)
        logger.info("started worker %d [%d]", slot, process.pid)

    def _watch(self) -> bool:
        """Wait a little for news from the workers; False on a startup failure."""
        workers = [w for w in self._slots if w is not None]
        waitables: list[Connection | int] = [w.process.sentinel for w in workers]
        waitables += [w.ready for w in workers if not w.ready_seen]
        wait(waitables, timeout=0.2)
        now = time.monotonic()
        for slot, worker in enumerate(self._slots):
            if worker is None:
                if now >= self._restart_at.get(slot, now):
                    self._restart_at.pop(slot, None)
                    self._start(slot)
                continue
            if not worker.ready_seen and worker.ready.poll():
                with contextlib.suppress(EOFError, OSError):
                    worker.ready.recv()
                    worker.ready_seen = True
            if worker.process.is_alive():
                continue
            worker.process.join()
            worker.ready.close()
            self._slots[slot] = None
            _forget_gauges(worker.process.pid)
            code = worker.process.exitcode
            if not worker.ready_seen and code is not None and code > 0:
                # It gave up by itself: the port is taken, the app cannot start. A new
                # worker would fail the same way.
                logger.error("worker %d exited with code %s before it could serve", slot, code)
                return False
            # Killed (a signal: negative code), or crashed after it served: replace it.
            logger.error("worker %d exited with code %s; replacing it", slot, code)
            self._restart_at[slot] = now + RESTART_DELAY
        return True

    def _stop(self) -> bool:
        """SIGTERM every worker and wait for them; True when all exited 0."""
        workers = [w for w in self._slots if w is not None]
        for worker in workers:
            _send(worker.process, signal.SIGTERM)
        forwarded = 1
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(w.process.is_alive() for w in workers) and time.monotonic() < deadline:
            wait([w.process.sentinel for w in workers], timeout=0.2)
            if len(self._signals) > forwarded:
                # Asked twice: uvicorn stops waiting for open responses on a SIGINT
                # that follows a SIGTERM.
                forwarded = len(self._signals)
                for worker in workers:
                    _send(worker.process, signal.SIGINT)
        clean = True
        for worker in workers:
            if worker.process.is_alive():
                logger.error("worker [%d] did not stop in time; killing it", worker.process.pid)
                worker.process.kill()
                clean = False
            worker.process.join()
            worker.ready.close()
            clean = clean and worker.process.exitcode == 0
        self._slots = [None] * len(self._slots)
        return clean


def _forget_gauges(pid: int | None) -> None:
    # A dead worker's open connections are gone; its counters stay in the sums.
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _send(process: BaseProcess, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _worker_main(settings: Settings, ready: Connection, supervisor: int) -> None:
    """One worker process: a :class:`HubServer` on its own ``SO_REUSEPORT`` socket."""
    # A session of its own: Ctrl-C in a terminal reaches the supervisor only, which
    # passes it on once; the worker must not get it twice (a second one forces exit).
    os.setsid()
    _exit_with_parent(supervisor)
    _configure_logging(settings)
    try:
        sockets = listen(settings.host, settings.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        sys.exit(STARTUP_FAILURE)

    def started() -> None:
        with contextlib.suppress(OSError):
            ready.send(True)

    try:
        server = build_server(settings, on_started=started)
        settle_heap()
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # forced stop: the supervisor already said why
        sys.exit(130)


def _exit_with_parent(supervisor: int) -> None:
    # Linux: SIGTERM when the supervisor dies, however it dies, so no worker is left
    # holding the port. Elsewhere a killed supervisor leaves its workers running.
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != supervisor:  # it died before the line above ran
        sys.exit(0)


def listen(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, shared with other
    processes through ``SO_REUSEPORT``: the kernel spreads connections over them."""
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" and "0.0.0.0" are separate sockets.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
