"""The cyclic garbage collector's settings for a served hub.

Two costs, measured under ``bench/`` (S6's churn; a burst of new streams, as in
``python -m bench.many_streams``) and counted with ``gc.callbacks``:

- Imports and set-up leave ~60,000 objects that live as long as the process; every full
  collection walked them all (19 ms each, 4% of the CPU under churn). They are frozen:
  out of the collector's sight, never freed.
- Each open stream holds ~56 tracked objects. With CPython's default thresholds
  (700, 10, 10) a burst of 10,000 new streams set off 6 full collections over a growing
  heap: 0.62 s of the 1.7 s it took, about 40%. A young generation of 10,000 lets the
  same burst pass with none (0.09 s of collection in all). The price: cyclic garbage
  may wait up to 10,000 allocations before it is found (in these bursts there was none);
  full collections still come as the heap grows.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG", "settle_heap"]

#: Allocations (less frees) of tracked objects between two young collections.
YOUNG = 10_000


def settle_heap() -> None:
    """Freeze what start-up made and widen the young generation; call once, just
    before serving. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
