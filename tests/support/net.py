"""Free loopback ports and waiting for a hub to answer /readyz."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
