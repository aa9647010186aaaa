"""``python -m workers.llm [options]``: the same as ``hub worker llm [options]``."""

from __future__ import annotations

from . import main

# Only when run: importing the module (a documentation tool, a package walk) must not
# start a worker.
if __name__ == "__main__":
    raise SystemExit(main())
