"""Running the hub under uvicorn, with a shutdown that does not hang on open streams."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from .app import create_app, drain
from .config import Settings

__all__ = ["HubServer", "serve"]


class HubServer(uvicorn.Server):
    """uvicorn's server, plus: on shutdown, stop accepting, then end every SSE stream.

    uvicorn waits for open responses to finish before it runs the app's shutdown, and an
    SSE response never finishes by itself: streams are closed here, first, with a
    jittered ``retry:`` hint.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.hub_app = app

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        drain(self.hub_app)
        await super().shutdown(sockets)


def build_server(settings: Settings, app: Starlette | None = None) -> HubServer:
    app = app or create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # SSE streams are long; a browser's reconnect must not be refused because of a
        # keep-alive timer meant for short requests.
        timeout_keep_alive=30,
    )
    return HubServer(config, app)


def serve(settings: Settings) -> None:
    """Run one hub process until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    build_server(settings).run()
