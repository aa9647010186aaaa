"""Start the two servers under test on loopback: the hub, and nginx + Nchan as the reference.

Both use the same Redis (127.0.0.1:6379 by default) under their own key prefix, so a run
never touches anybody else's keys and cleans up only what it wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
#: Debian's libnginx-mod-nchan installs the module here.
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
# Unusual prefixes on purpose: another session's cleanup of "bench*" keys once deleted a
# replay backlog mid-run.
HUB_PREFIX = "ssebench7:"
#: Nchan's Redis keys are {NS}:... with nchan_redis_namespace; we delete only those.
NCHAN_NAMESPACE = "ssebench7nchan"


def free_port() -> int:
    """A port the kernel just had free on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_pid(host: str, port: int) -> int | None:
    """The pid of the redis-server on ``host:port`` (its CPU is part of each server's cost)."""
    try:
        info = redis.Redis(host=host, port=port).info("server")
    except redis.RedisError:
        return None
    pid = info.get("process_id")
    return int(pid) if pid else None


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    """One running server: how to subscribe and publish, and which pids to charge CPU to."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    #: pids whose CPU and RSS belong to this server (the server's workers and redis-server)
    server_pids: list[int]
    redis_pid: int | None
    workdir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return self.server_pids + ([self.redis_pid] if self.redis_pid else [])

    def sub_path(self, channel: str) -> str:
        raise NotImplementedError

    def pub_url(self, channel: str) -> str:
        raise NotImplementedError

    def pub_body(self, channel: str) -> str:
        """A str.format template for ssepub.py ({ts} is the send time in ns)."""
        raise NotImplementedError

    def pub_headers(self) -> list[str]:
        return []

    def stop(self) -> None:
        """Stop the process we started (by its pid) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.name == "hub" else signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Hub(Server):
    def sub_path(self, channel: str) -> str:
        return f"/events?channel={channel}"

    def pub_url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self.port}/publish"

    def pub_body(self, channel: str) -> str:
        return '{{"channel":"' + channel + '","data":"{ts}"}}'

    def pub_headers(self) -> list[str]:
        return ["Content-Type: application/json"]


class Nchan(Server):
    def sub_path(self, channel: str) -> str:
        return f"/sub/{channel}"

    def pub_url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self.port}/pub/{channel}"

    def pub_body(self, channel: str) -> str:
        # Nchan sends the POST body as the event's data line as it is.
        return "{ts}"


def start_hub(
    redis_url: str,
    workdir: Path,
    *,
    history_size: int = 1000,
    max_connections: int = 20000,
    source: Path | None = None,
    workers: int = 1,
) -> Hub:
    """``hub serve`` as a subprocess on a free port, on its own key prefix; with
    ``source``, the hub of that checkout (an older commit, to measure beside this one);
    with ``workers``, ``hub serve --workers N`` (its pids are the supervisor's and the
    workers')."""
    port = free_port()
    env = dict(os.environ, HUB_MAX_CONNECTIONS=str(max_connections))
    hub_exe = Path(sys.executable).with_name("hub")
    cmd = [str(hub_exe)] if hub_exe.exists() else [sys.executable, "-m", "hub"]
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
        cmd = [sys.executable, "-m", "hub"]
    cmd += [
        "serve",
        "--port",
        str(port),
        "--redis-url",
        redis_url,
        "--key-prefix",
        HUB_PREFIX,
        "--history-size",
        str(history_size),
        "--log-level",
        "warning",
        *(("--workers", str(workers)) if workers > 1 else ()),
    ]
    log = open(workdir / "hub.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=source or ROOT)
    log.close()
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", 20, proc)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    host, rport = _redis_hostport(redis_url)
    pids = [proc.pid, *_children(proc.pid, workers)] if workers > 1 else [proc.pid]
    return Hub("hub", port, proc, pids, redis_pid(host, rport), workdir)


def _children(pid: int, want: int, timeout: float = 20) -> list[int]:
    """The ``want`` child processes of ``pid`` (a supervisor's workers), once all exist."""
    deadline = time.monotonic() + timeout
    while True:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(found) >= want or time.monotonic() > deadline:
            return [int(p) for p in found]
        time.sleep(0.1)


def nchan_missing() -> str | None:
    """Why Nchan cannot run here, or None when nginx and the module are installed."""
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (apt-get install nginx libnginx-mod-nchan)"
    if not NCHAN_MODULE.exists():
        return f"{NCHAN_MODULE} is missing (apt-get install libnginx-mod-nchan)"
    return None


NGINX_CONF = """\
load_module {module};
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {nofile}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream redis_up {{ nchan_redis_server redis://{redis}; }}
    nchan_redis_namespace {ns};
    nchan_message_buffer_length {buffer};
    nchan_message_timeout 1h;
    server {{
        listen 127.0.0.1:{port};
        location ~ /pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_redis_pass redis_up;
        }}
        location ~ /sub/(\\w+)$ {{
            nchan_subscriber eventsource;
            # Nchan's default is oldest: a new client would first get the buffered backlog.
            nchan_subscriber_first_message newest;
            nchan_channel_id $1;
            nchan_redis_pass redis_up;
        }}
        location ~ /replay/(\\w+)$ {{
            nchan_subscriber eventsource;
            nchan_subscriber_first_message oldest;
            nchan_channel_id $1;
            nchan_redis_pass redis_up;
        }}
        location = /ready {{ return 200 "ok"; }}
    }}
}}
"""


def start_nchan(redis_url: str, workdir: Path, *, buffer: int = 1000, nofile: int = 19000) -> Nchan:
    """nginx in the foreground with one process (master_process off) and its own prefix."""
    port = free_port()
    ndir = Path(tempfile.mkdtemp(prefix="nchan-", dir=workdir))
    host, rport = _redis_hostport(redis_url)
    conf = NGINX_CONF.format(
        module=NCHAN_MODULE,
        dir=ndir,
        port=port,
        redis=f"{host}:{rport}",
        ns=NCHAN_NAMESPACE,
        buffer=buffer,
        nofile=nofile,
    )
    (ndir / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    log = open(ndir / "stderr.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [nginx, "-p", str(ndir), "-c", str(ndir / "nginx.conf"), "-e", str(ndir / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        _wait_http(f"http://127.0.0.1:{port}/ready", 15, proc)
    except Exception:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            "nginx + nchan did not start: " + (ndir / "error.log").read_text()[-800:]
        ) from None
    # master_process off: the process we started is the worker that serves everything.
    return Nchan("nchan", port, proc, [proc.pid], redis_pid(host, rport), workdir)


def _redis_hostport(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host or "127.0.0.1", int(port or 6379)


def cleanup_redis(redis_url: str) -> int:
    """Delete only the keys this benchmark wrote (our two prefixes); never FLUSHALL."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for pattern in (f"{HUB_PREFIX}*", f"{NCHAN_NAMESPACE}*", f"{{{NCHAN_NAMESPACE}*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    client.close()
    return deleted
