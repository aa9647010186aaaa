"""``python -m bench`` at a tiny size, so the benchmark cannot rot unnoticed.

No timing is asserted: only that it runs, writes its JSON, and that the hub lost nothing.
Nchan is measured too when nginx and libnginx-mod-nchan are installed; otherwise the
benchmark skips it with a note and this test still runs the hub's part.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.alternating import median_run

ROOT = Path(__file__).resolve().parent.parent


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="needs a C compiler")
@pytest.mark.skipif(not _redis_up(), reason="needs Redis on 127.0.0.1:6379")
def test_bench_quick_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "S1a,S4,S5", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| scenario | metric | hub | nchan | hub/nchan |" in proc.stdout
    results = json.loads(out.read_text())
    assert out.with_suffix(".md").exists()
    assert set(results) >= {"machine", "quick", "nchan", "sizes", "scenarios"}
    assert results["quick"] is True
    assert set(results["scenarios"]) == {"S1a", "S4", "S5"}

    hub = {sid: res["hub"] for sid, res in results["scenarios"].items()}
    for sid, res in hub.items():
        assert "error" not in res, (sid, res)
    assert hub["S1a"]["delivered_ratio"] == 1.0
    assert hub["S1a"]["failed"] == 0
    assert hub["S4"]["received"] == hub["S4"]["events_behind"]
    for key in (
        "ab_msgs_per_s",
        "http_msgs_per_s",
        "publisher_single_msgs_per_s",
        "publisher_batch_msgs_per_s",
    ):
        assert hub["S5"][key] > 0
    assert hub["S5"]["ab"]["non_2xx"] == 0

    # Nchan either ran (and then lost nothing either) or says why it was skipped.
    for res in results["scenarios"].values():
        assert "nchan" in res
    nchan_s1 = results["scenarios"]["S1a"]["nchan"]
    assert "skipped" in nchan_s1 or nchan_s1["delivered_ratio"] == 1.0


def test_template_bench_runs_and_reports_every_case() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/templates.py", "--repeat", "3", "--re-budget", "0.01"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if " us | " in line]
    assert len(rows) == 4, proc.stdout


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_redis_cost_bench_compares_two_revisions_and_the_floors() -> None:
    tiny = ["--events", "300", "--channels", "20", "--inflight", "10", "--rounds", "1", "--cluster"]
    proc = subprocess.run(
        [sys.executable, "bench/redis_cost.py", "--old-ref", "HEAD", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    runs, summary = lines[:-1], lines[-1]
    layouts = ["new", "old", "floor-script", "floor-pipelined", "new-cluster"]
    assert [run["layout"] for run in runs] == layouts
    # On the cluster the channels' slots spread the work over the three masters.
    assert len(runs[-1]["per_shard"]) == 3
    # Each layout ran the code it names: this tree, then the exported revision.
    assert runs[0]["code"] == str(ROOT / "hub" / "__init__.py")
    assert runs[1]["code"].endswith("/old/hub/__init__.py")
    assert not runs[1]["code"].startswith(str(ROOT))
    assert all(run["us_per_publish"] > 0 for run in runs)
    assert summary["old_over_new"] > 0


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_hold_back_bench_times_a_stream_on_one_channel_beside_one_on_three() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/hold_back.py", "--events", "60", "--rate", "200", "--cluster"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    streams = [line for line in lines if "stream" in line]
    assert [s["events"] for s in streams] == [20, 20, 40]  # every event reached both
    assert all(0 < s["p50_ms"] <= s["max_ms"] for s in streams)
    framing = lines[-1]
    assert framing["per_client_id_ns_per_delivery"] > 0
    assert framing["shared_frame_ns_per_delivery"] > 0


def _many_streams(*args: str) -> tuple[dict[str, Any], str]:
    """``python -m bench.many_streams`` at 20 streams a process: its figures and output."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.many_streams", "--most", "20", "--seconds", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[: proc.stdout.index("\n}\n") + 2]), proc.stdout


@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="needs a C compiler")
@pytest.mark.skipif(not _redis_up(), reason="needs Redis on 127.0.0.1:6379")
def test_many_streams_runs_on_one_process_and_on_two_workers() -> None:
    made, out = _many_streams()
    assert made["hub"]["streams"] == 20
    assert made["hub --workers 2"]["streams"] == 40
    for name in ("hub", "hub --workers 2"):
        assert made[name]["failed"] == 0
        assert made[name]["delivered_ratio"] == 1.0, made[name]
    assert "| server | streams |" in out


@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="needs a C compiler")
@pytest.mark.skipif(not _redis_up(), reason="needs Redis on 127.0.0.1:6379")
def test_many_streams_measures_a_baseline_checkout_beside_this_one() -> None:
    made, _ = _many_streams("--no-nchan", "--no-workers", "--baseline", str(ROOT))
    for name in ("hub", f"hub at {ROOT}"):
        assert made[name]["streams"] == 20
        assert made[name]["delivered_ratio"] == 1.0, made[name]
        # 20 streams take less than a clock tick (10 ms) of CPU: a figure, not its size
        assert made[name]["cpu_us_per_stream_set_up"] >= 0


def test_alternating_rounds_report_the_median_and_the_worst_loss() -> None:
    rounds = [
        {"cpu_us_per_delivery": 12.4, "p99_ms": 150.0, "delivered_ratio": 1.0, "failed": 0},
        {"cpu_us_per_delivery": 10.3, "p99_ms": 110.0, "delivered_ratio": 0.98, "failed": 2},
        {"cpu_us_per_delivery": 10.9, "p99_ms": 130.0, "delivered_ratio": 1.0, "failed": 0},
    ]
    merged = median_run([dict(r, sseload="opened") for r in rounds])
    assert merged["cpu_us_per_delivery"] == 10.9
    assert merged["p99_ms"] == 130.0
    assert merged["delivered_ratio"] == 0.98  # a round that lost events is not outvoted
    assert merged["failed"] == 2
    assert merged["sseload"] == "opened"
    assert merged["rounds_cpu_us_per_delivery"] == [12.4, 10.3, 10.9]
