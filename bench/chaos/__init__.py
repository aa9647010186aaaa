"""``python -m bench chaos``: a randomized fault campaign with an exactly-once checker
(see docs/chaos.md). Test tooling, so it lives in bench/, not in the hub."""
