"""What /proc says about hub processes: their workers and the connections each holds."""

from __future__ import annotations

from pathlib import Path


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes of a ``hub serve --workers N`` (not multiprocessing's helper)."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(pid) for pid in children if b"spawn_main" in cmdline(int(pid))]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def streams_per_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections on ``port`` each process holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = [str(fd.readlink()) for fd in fds.iterdir() if fd.is_symlink()]
        counts[pid] = sum(link[8:-1] in inodes for link in links if link.startswith("socket:"))
    return counts
