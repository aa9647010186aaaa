"""The published benchmark tables are the ones the cited run's JSON makes.

``bench/last-full-run.json`` is the full ``python -m bench`` run that docs/performance.md
and the newest section of bench/RESULTS.md quote. Editing a figure by hand, or committing
a new run without regenerating the pages (``python -m bench.report``), fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "last-full-run.json"


def _run() -> dict[str, Any]:
    results: dict[str, Any] = json.loads(RUN.read_text())
    return results


def test_the_cited_run_is_a_full_run_of_every_scenario_beside_nchan() -> None:
    results = _run()
    assert results["quick"] is False
    assert results["nchan"] == "nginx + libnginx-mod-nchan"
    assert set(results["scenarios"]) == {sid for sid, _key, _label in report.TABLE}


def test_the_docs_table_is_the_one_the_cited_run_makes() -> None:
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    want = report.docs_table(_run())
    assert want in page, (
        "docs/performance.md drifted from the cited run: "
        "python -m bench.report --docs --write docs/performance.md bench/last-full-run.json"
    )


def test_the_newest_results_section_is_the_one_the_cited_run_makes() -> None:
    page = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    newest = page.split("\n## ")[1]
    assert report.markdown(_run()) in newest, (
        "the newest section of bench/RESULTS.md does not hold the cited run's table: "
        "python -m bench.report bench/last-full-run.json"
    )


def test_replacing_a_table_keeps_the_page_around_it() -> None:
    new = "| a | b |\n| --- | --- |\n| 3 | 4 |"
    page = "intro\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\nafter\n"
    assert report.replace_table(page, new) == "intro\n\n" + new + "\n\nafter\n"
