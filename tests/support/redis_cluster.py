"""A real Redis Cluster for tests: 3 masters and 3 replicas on loopback, nothing on disk.

Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``.
A node's cluster bus listens on its port + 10000, so ports are picked with both the
port and its bus port free, and both below every other range a test takes ports from.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from support.net import run_slot

__all__ = ["RedisCluster"]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        # As redis-server binds: a port with connections in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, first: int, last: int) -> list[int]:
    """``count`` consecutive ports in ``[first, last]``, each free with its bus port free too."""
    port = first
    while port + count - 1 <= last:
        ports = list(range(port, port + count))
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
        port += count
    raise RuntimeError(f"no {count} free ports (and bus ports +10000) in {first}-{last}")


def _port_range() -> tuple[int, int]:
    """A range of its own for each pytest-xdist worker (``gw0``, ``gw1``...): two
    workers scanning one range at once could both pick a port before either binds it.

    Ports 1100-1999, so bus ports 11100-11999: under ``support.net``'s blocks (from
    12000) and far under the kernel's ephemeral range (32768-60999 here). Bus ports at
    40301 and up once all lay under a test's outgoing connections, and the cluster
    could not start."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    first = 1100 + 100 * (index % 3 + 3 * run_slot())
    return first, first + 99


class RedisCluster:
    """Six redis-servers made into one cluster (3 masters, 1 replica each)."""

    def __init__(self, nodes: int = 6, ports: tuple[int, int] | None = None) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} is not installed: apt-get install redis-server")
        self.ports = _free_ports(nodes, *(ports or _port_range()))
        self._dir = Path(tempfile.mkdtemp(prefix="hub-cluster-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The hub's URL for this cluster (two seed nodes: either is enough)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def start(self) -> None:
        for port in self.ports:
            (self._dir / str(port)).mkdir()
            self._spawn(port)
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping(), f"node {port} to start")
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in self.ports]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait(self._ready, "the cluster to agree on its slots and replicas to sync")

    def _spawn(self, port: int) -> None:
        workdir = self._dir / str(port)
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                # Replicas sync at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def restart(self, port: int) -> None:
        """Start the (killed) node on ``port`` again: with its nodes.conf it rejoins the
        cluster, as a replica if another node took its slots meanwhile. Returns once the
        cluster is whole again."""
        if self.processes[port].poll() is None:
            self.processes[port].kill()  # (a test that failed before it killed the node)
        self.processes.pop(port).wait(10)
        self._spawn(port)
        self._wait(self._ready, "the restarted node to rejoin and sync", timeout=60)

    def _ready(self) -> bool:
        for port in self.ports:
            node = redis.Redis(port=port)
            info = node.cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            # Every node's view agrees: no node failed, one replica per master.
            flags = [n["flags"] for n in node.cluster("nodes").values()]
            if (
                any("fail" in f for f in flags)
                or sum("slave" in f for f in flags) != len(self.ports) // 2
            ):
                return False
            replication = node.info("replication")
            # Every master's replica in sync: a test may count on a write being replicated.
            if replication["role"] == "master" and not (
                replication.get("connected_slaves") == 1
                and replication.get("slave0", {}).get("state") == "online"
            ):
                return False
        return True

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
