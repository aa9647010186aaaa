"""Worker subprocesses whose output a test reads line by line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from .hubs import Backends

ROOT = Path(__file__).resolve().parents[2]

#: Restricts the parametrized ``backends`` fixture to real Redis: a worker is another
#: process, and cannot share the embedded backend.
redis_only = pytest.mark.parametrize("backends", ["redis"], indirect=True)


class WorkerProcess:
    """A worker subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(process.stdout)),
            asyncio.create_task(self._read(process.stderr)),
        ]

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    async def wait_for_log(self, text: str, count: int = 1, timeout: float = 5) -> list[str]:
        """Wait until ``count`` output lines contain ``text``."""

        async def enough() -> None:
            while len(self.matching(text)) < count:
                if self.process.returncode is not None and all(r.done() for r in self._readers):
                    raise AssertionError(
                        f"worker exited ({self.process.returncode}) before logging "
                        f"{count} x {text!r}:\n{self.output}"
                    )
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"no {count} x {text!r} in the worker's output after {timeout}s:\n{self.output}"
            ) from None
        return self.matching(text)

    async def wait(self, timeout: float = 5) -> int:
        """Wait for the process to exit and its output to be read; return its exit code."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._readers), timeout)
        return code

    async def terminate(self, timeout: float = 5) -> tuple[int, float]:
        """SIGTERM; return the exit code and how many seconds the process took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await self.wait(timeout)
        return code, time.monotonic() - started

    async def cleanup(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(self.process.wait(), 10)
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def redis_env(backends: Backends) -> dict[str, str]:
    assert backends.url is not None
    return {"HUB_REDIS_URL": backends.url, "HUB_KEY_PREFIX": backends.prefix}
