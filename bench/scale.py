#!/usr/bin/env python3
"""Scale-out figure: deliveries per second and CPU per delivery for 1 node, then 2.

    .venv/bin/python bench/scale.py [--redis-url redis://127.0.0.1:6379/0] [--nodes 1,2]
        [--conns 1000] [--rate 600] [--seconds 8] [--layout nodes|workers] [--runs 1]

For each node count N it starts N ``hub serve`` processes on free loopback ports
(``--layout workers``: one ``hub serve --workers N``), opens CONNS SSE clients on one
channel split evenly over the nodes (sseload, one per node), and publishes over HTTP
with one closed-loop publisher per node (ssepub, RATE/N msg/s each, waiting for each
answer). RATE is meant to be more than the nodes can deliver: each publisher slows down
to its node's pace, so the deliveries measured are what the nodes can do. Every run
ends on its own; keys live under a prefix of their own and are deleted afterwards.

Prints one JSON line per run, then a summary line with the ratio of deliveries/s of
the largest node count to one node. CPU is that of the hub processes and of Redis
(found through INFO server, so only a Redis on this machine is counted), over the same
window as fanout.py: from SETTLE s after the clients connected to SETTLE s after the
last publish. The load tools' own CPU is reported apart (`load_cpu_s`): on a 2-core
machine it competes with the nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fanout import build_sseload, cpu_seconds  # noqa: E402 - the shared tool, unchanged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"hub on port {port} not ready after {timeout}s")
        time.sleep(0.1)


def start_hubs(
    args: argparse.Namespace, nodes: int, prefix: str
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    common = ["--redis-url", args.redis_url, "--key-prefix", prefix, "--log-level", "warning"]
    serve = [sys.executable, "-m", "hub", "serve"]
    if args.layout == "workers":
        port = free_port()
        cmd = [*serve, "--port", str(port), "--workers", str(nodes), *common]
        hubs, ports = [subprocess.Popen(cmd, env=env, stderr=args.log)], [port] * nodes
    else:
        ports = [free_port() for _ in range(nodes)]
        hubs = [
            subprocess.Popen([*serve, "--port", str(p), *common], env=env, stderr=args.log)
            for p in ports
        ]
    for port in set(ports):
        wait_ready(port)
    if args.layout == "workers":
        time.sleep(2)  # every worker up (readyz answers as soon as one is)
    return hubs, ports


def stop_hubs(hubs: list[subprocess.Popen[bytes]]) -> None:
    for hub in hubs:
        hub.send_signal(signal.SIGTERM)
    for hub in hubs:
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()


def one_run(args: argparse.Namespace, nodes: int, redis_pid: int | None) -> dict[str, Any]:
    prefix = f"scale-{secrets.token_hex(4)}:"
    hubs, ports = start_hubs(args, nodes, prefix)
    sseload = build_sseload()
    path = "/events?channel=s"
    try:
        loads = [
            subprocess.Popen(
                [
                    sseload,
                    "127.0.0.1",
                    str(port),
                    path,
                    str(args.conns // nodes),
                    str(args.seconds + 2 * args.settle),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for port in ports
        ]
        time.sleep(args.settle)
        hub_pids = [h.pid for h in hubs]
        hub0 = sum(cpu_seconds(p) for p in hub_pids)
        redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
        load0 = sum(cpu_seconds(p.pid) for p in loads)
        body = '{{"channel":"s","data":"{ts}"}}'
        reaped0 = _reaped_cpu()
        per = args.publishers
        pubs = [
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(HERE, "ssepub.py"),
                    f"http://127.0.0.1:{port}/publish",
                    str(args.rate / nodes / per),
                    str(args.seconds),
                    "--body",
                    body,
                    "--header",
                    "Content-Type: application/json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for port in ports
            for _ in range(per)
        ]
        pub_results = []
        for pub in pubs:
            out, _ = pub.communicate()
            pub_results.append(json.loads(out or "{}"))
        pub_cpu = _reaped_cpu() - reaped0  # the publishers, now reaped
        time.sleep(args.settle)
        hub1 = sum(cpu_seconds(p) for p in hub_pids)
        redis1 = cpu_seconds(redis_pid) if redis_pid else 0.0
        load1 = sum(cpu_seconds(p.pid) for p in loads)
        results = []
        for load in loads:
            out, err = load.communicate()
            results.append(json.loads(out) if out.strip() else {"error": err[-300:]})
    finally:
        stop_hubs(hubs)
        _delete_prefix(args.redis_url, prefix)
    published = sum(r.get("sent", 0) for r in pub_results)
    events = sum(r.get("events", 0) for r in results)
    connections = sum(r.get("connections", 0) for r in results)
    cpu = (hub1 - hub0) + (redis1 - redis0)
    # Each client follows the one channel: every event published (on any node) is due
    # to every client.
    expected = published * connections
    return {
        "nodes": nodes,
        "layout": args.layout,
        "connections": connections,
        "failed": sum(r.get("failed", 0) for r in results),
        "closed_by_peer": sum(r.get("closed_by_peer", 0) for r in results),
        "published": published,
        "publishers": len(pub_results),
        "publish_rate": round(published / args.seconds, 1),
        "deliveries": events,
        "delivered_ratio": round(events / expected, 4) if expected else None,
        "deliveries_per_s": round(events / args.seconds),
        "hub_cpu_s": round(hub1 - hub0, 2),
        "redis_cpu_s": round(redis1 - redis0, 2),
        "cpu_us_per_delivery": round(cpu * 1e6 / events, 1) if events else None,
        "load_cpu_s": round(load1 - load0 + pub_cpu, 2),
        "p50_ms": max((r.get("p50_ms", 0) for r in results), default=None),
        "p99_ms": max((r.get("p99_ms", 0) for r in results), default=None),
    }


def _reaped_cpu() -> float:
    """CPU seconds of this script's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--nodes", default="1,2", help="node counts to measure, comma-separated")
    ap.add_argument(
        "--layout",
        choices=["nodes", "workers"],
        default="nodes",
        help="nodes: separate hub serve processes on their own ports; "
        "workers: one hub serve --workers N",
    )
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument(
        "--rate",
        type=float,
        default=600,
        help="msg/s asked for in total (more than the nodes can do)",
    )
    ap.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="closed-loop publishers per node (more keep a node busier)",
    )
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--settle", type=float, default=2)
    ap.add_argument("--runs", type=int, default=1, help="runs per node count")
    ap.add_argument("--hub-log", default="/tmp/hub-scale.log", help="the hubs' stderr")
    args = ap.parse_args()

    # 1000+ sockets in the tools and the hubs: raise the soft limit as far as allowed.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    client = redis.Redis.from_url(args.redis_url)
    try:
        info = client.info("server")
    finally:
        client.close()
    local = info.get("tcp_port") and args.redis_url.split("//", 1)[1].startswith(
        ("127.", "localhost")
    )
    redis_pid = int(info["process_id"]) if local else None

    print(json.dumps({"machine": machine(), "redis_pid": redis_pid}), flush=True)
    best: dict[int, list[float]] = {}
    with open(args.hub_log, "ab") as log:
        args.log = log
        for _ in range(args.runs):
            for nodes in [int(n) for n in args.nodes.split(",")]:
                result = one_run(args, nodes, redis_pid)
                best.setdefault(nodes, []).append(result["deliveries_per_s"])
                print(json.dumps(result), flush=True)
    counts = sorted(best)
    summary: dict[str, Any] = {
        "deliveries_per_s": {n: best[n] for n in counts},
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if len(counts) > 1 and 1 in best:
        top = counts[-1]
        summary[f"ratio_{top}_to_1"] = round(
            (sum(best[top]) / len(best[top])) / (sum(best[1]) / len(best[1])), 2
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
