"""Free loopback ports and waiting for a hub to answer /readyz."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time

import httpx

#: Ports for servers the tests start: below the kernel's ephemeral range (32768-60999
#: here), so no outgoing connection takes one between its choice and the server's bind,
#: and a block of its own for each pytest-xdist worker, so two workers never choose the
#: same one. (Port 0's choice is random over the ephemeral range: with three workers, a
#: hub once answered /readyz on another worker's port and was gone a moment later.)
#: ``HUB_TEST_SLOT`` (0, 1 or 2) moves a whole run to blocks of its own, so that two
#: runs on one machine (two checkouts) never choose the same ports either.
_BLOCK = 2000
_next_port = itertools.count()


def run_slot() -> int:
    """Which of three port ranges this run uses (``HUB_TEST_SLOT``, default 0)."""
    slot = os.environ.get("HUB_TEST_SLOT", "0")
    return int(slot) % 3 if slot.isdigit() else 0


def _first_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return 12000 + _BLOCK * (index % 3 + 3 * run_slot())


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before in this process
    (until the block wraps)."""
    first = _first_port()
    for _ in range(_BLOCK):
        port = first + next(_next_port) % _BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or in TIME_WAIT
            return port
    raise RuntimeError(f"no free port in {first}-{first + _BLOCK - 1}")


async def wait_ready(url: str, timeout: float = 10) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = await client.get(f"{url}/readyz")
                if response.status_code == 200:
                    return
                state = response.text
            except httpx.TransportError as exc:  # not listening yet
                state = repr(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"hub at {url} not ready: {state}")
            await asyncio.sleep(0.05)
