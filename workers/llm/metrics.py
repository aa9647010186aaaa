"""The ``llm`` worker's numbers, in Prometheus' format as the hub's (:mod:`hub.metrics`).

- ``llm_answers_total{outcome}``: answers ended, by outcome: ``done``, ``stopped``
  (a ``stop`` event ended it), ``failed`` (the model failed, or the worker did);
- ``llm_first_output_seconds{stream}``: from the start of the model request to the first
  ``sentence`` (or ``delta``) published;
- ``llm_tokens_per_second``: each answer's completion tokens (as the model counts them,
  else text pieces) over its duration.

A worker run by ``hub serve --worker llm`` registers them with the hub's own registry
(its ``/metrics`` shows them); a worker process serves them on ``--metrics-port``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["OUTCOMES", "LLMMetrics"]

OUTCOMES = ("done", "stopped", "failed")

_FIRST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_RATE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_SHARED: dict[int, LLMMetrics] = {}


class LLMMetrics:
    """The worker's metric objects, in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.answers = Counter("llm_answers", "Answers ended, by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.answers.labels(outcome=outcome)  # shown at 0 before the first one
        self.first_output = Histogram(
            "llm_first_output_seconds",
            "From the model request to the first sentence (or delta) published.",
            ["stream"],
            registry=r,
            buckets=_FIRST_BUCKETS,
        )
        self.tokens_per_second = Histogram(
            "llm_tokens_per_second",
            "Completion tokens of an answer over its duration.",
            registry=r,
            buckets=_RATE_BUCKETS,
        )

    @classmethod
    def shared(cls, registry: CollectorRegistry | None) -> LLMMetrics:
        """The metrics registered in ``registry`` (made on first use: a worker restarted
        in the same process counts on where it left off); new ones for ``None``."""
        if registry is None:
            return cls()
        made = _SHARED.get(id(registry))
        if made is None or made.registry is not registry:
            made = _SHARED[id(registry)] = cls(registry)
        return made

    def finished(self, outcome: str) -> None:
        self.answers.labels(outcome=outcome).inc()

    def observe(self, first: float | None, tokens: int, seconds: float, stream: str) -> None:
        """One answer's figures: seconds to its first event, tokens, duration."""
        if first is not None:
            self.first_output.labels(stream=stream).observe(first)
        if seconds > 0 and tokens:
            self.tokens_per_second.observe(tokens / seconds)
