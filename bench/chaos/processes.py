"""The processes a chaos run starts: one redis-server (AOF on, fsync always), hub nodes
on loopback ports, haproxy in front of them. Each can be stopped and started again on
the same port; :meth:`Processes.cleanup` ends every one still running, by its pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_tools() -> list[str]:
    return [tool for tool in ("redis-server", "haproxy") if shutil.which(tool) is None]


class Proc:
    """One child process that can be signalled and started again with the same command."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.cmd = cmd
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int, wait: float = 20.0) -> int | None:
        """Send ``signum`` and wait for the exit (SIGKILL after ``wait`` seconds)."""
        if not self.running:
            return None
        assert self.popen is not None
        self.popen.send_signal(signum)
        try:
            return self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def kill(self) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)


def wait_http(url: str, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.running:
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s; see {proc.log}")
        time.sleep(0.1)


class RedisProc(Proc):
    """redis-server with AOF on and ``appendfsync always``: an acknowledged write is on
    disk before the answer, so a restart (even SIGKILL) loses no acknowledged event."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        data = workdir / "redis"
        data.mkdir()
        cmd = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(data),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        super().__init__("redis", cmd, workdir / "redis.log")

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start; see {self.log}")
            time.sleep(0.05)


class HubNode(Proc):
    """``python -m hub serve`` on a fixed loopback port, so a restart comes back where
    haproxy expects it."""

    def __init__(self, index: int, redis_url: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "hub", "serve", "--port", str(self.port)]
        cmd += ["--redis-url", redis_url]
        base = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        super().__init__(f"hub{index}", cmd, workdir / f"hub{index}.log", {**base, **env})

    def start(self) -> None:
        super().start()
        wait_http(f"{self.url}/readyz", 60, self)


class Haproxy(Proc):
    """haproxy with the shipped ``deploy/haproxy.cfg``: only the listening address, the
    servers and the health-check interval are the run's own."""

    def __init__(self, ports: list[int], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(ports, self.port))
        cmd = [shutil.which("haproxy") or "haproxy", "-f", str(config), "-db"]
        super().__init__("haproxy", cmd, workdir / "haproxy.log")

    def start(self) -> None:
        super().start()
        # Up once one backend answers its health check: a request then goes through.
        wait_http(f"{self.url}/readyz", 30, self)


def haproxy_config(ports: list[int], listen: int) -> str:
    """``deploy/haproxy.cfg`` for nodes on loopback ports (as tests/support/processes.py
    does for the scale tests: docker's DNS gives way to one ``server`` line a node)."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    text = re.sub(r"(?ms)^resolvers docker\n.*?(?=^\S|\Z)", "", text)
    text, binds = re.subn(r"(?m)^(\s+)bind :8000$", rf"\1bind 127.0.0.1:{listen}", text)
    servers = "\n".join(f"    server hub{i} 127.0.0.1:{port}" for i, port in enumerate(ports))
    text, templates = re.subn(r"(?m)^\s+server-template hub .*$", servers, text)
    if (binds, templates) != (1, 1):
        raise RuntimeError("deploy/haproxy.cfg: no `bind :8000` or `server-template` line")
    text = re.sub(r"\binter \d+\w*", "inter 300ms", text)
    text = re.sub(r"\bmaxconn \d+", "maxconn 2000", text)
    return text.replace("log stdout format raw local0 info", "log stdout format raw local0 err")


class Processes:
    """Everything started, to be ended in one place whatever happens."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.all.append(proc)
        return proc

    def cleanup(self) -> None:
        # SIGTERM first (a hub drains, Redis writes its AOF), SIGKILL whatever lingers.
        for proc in reversed(self.all):
            if proc.running:
                assert proc.popen is not None
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.all):
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
