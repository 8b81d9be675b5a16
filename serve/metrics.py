"""The server's Prometheus metrics (docs/design.md, Metrics), on an injected registry.

Labels are closed sets: ``model`` is a run id of the fleet, ``variant`` a registry name,
``shift`` a split of the sweep's task (or ``none`` when a request carries no label),
``result`` one of correct / incorrect / ungraded, ``reason`` one of ERROR_REASONS. Every
combination is created at start-up with value 0, so dashboards see the series (and
``rate()`` has a starting point) before the first request; nothing a client sends can
create a new label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RESULTS = ("correct", "incorrect", "ungraded")
GRADED = ("correct", "incorrect")
UNLABELLED = "none"
ERROR_REASONS = (
    "body_too_large", "body_timeout", "malformed_json", "invalid_request", "unknown_model", "unknown_shift",
    "prompt_too_long", "unencodable_prompt", "max_tokens_out_of_range", "temperature", "unauthorized", "not_found",
    "method_not_allowed", "overloaded", "timeout", "model_unavailable", "internal",
    # refused by the HTTP layer under the app (serve/http.py), before a request reaches it
    "headers_too_large", "header_timeout", "malformed_http",
)
# 0.1 ms to 10 s: a tiny model answers in about a millisecond, a busy batch in tens
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Nothing:
    """Stands in for every metric when recording is off: each call does nothing."""

    def labels(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class NullMetrics:
    """Same interface as ``Metrics``, records nothing (the telemetry-overhead baseline)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry
        nothing = _Nothing()
        for name in ("requests", "digits", "duration", "tokens", "errors", "inflight", "batch_size", "queue_depth",
                     "model_info", "models_loaded"):
            setattr(self, name, nothing)

    def declare_fleet(self, models, shifts) -> None:
        pass

    def completed(self, *args) -> None:
        pass

    def batch(self, variant: str, size: int) -> None:
        pass

    def error(self, reason: str) -> None:
        pass


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter("fracture_requests", "Completed completions by model (run), variant, shift label "
                                "and grading result", ["model", "variant", "shift", "result"], registry=registry)
        # the per-digit measure of graded answers (the analysis's default measure): digits right / wrong
        self.digits = Counter("fracture_answer_digits", "Answer digits of graded completions by model (run), "
                              "variant, shift label and whether the digit was right", ["model", "variant", "shift",
                                                                                      "result"], registry=registry)
        self.duration = Histogram("fracture_request_duration_seconds", "Completion latency, queueing included",
                                  ["variant"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("fracture_generated_tokens", "Tokens generated", ["variant"], registry=registry)
        self.errors = Counter("fracture_request_errors", "Rejected requests by reason", ["reason"],
                              registry=registry)
        self.inflight = Gauge("fracture_inflight_requests", "Completion requests being handled", registry=registry)
        self.batch_size = Histogram("fracture_batch_size", "Requests decoded together", ["variant"],
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("fracture_queue_depth", "Requests waiting or decoding", registry=registry)
        self.model_info = Gauge("fracture_model_info", "One series per served model: its checkpoint step",
                                ["model", "variant", "step"], registry=registry)
        self.models_loaded = Gauge("fracture_models_loaded", "Models with a live ONNX Runtime session",
                                   registry=registry)
        self._errors = {reason: self.errors.labels(reason) for reason in ERROR_REASONS}
        # labelled children, looked up once: ``labels()`` on every request costs more than the update
        self._requests: dict[tuple[str, str, str, str], object] = {}
        self._digits: dict[tuple[str, str, str, str], object] = {}
        self._per_variant: dict[str, tuple] = {}

    def declare_fleet(self, models: list[tuple[str, str, int]], shifts: list[str]) -> None:
        """Create every (model, variant, shift, result) series at 0 and the model_info series."""
        for run, variant, step in models:
            self.model_info.labels(run, variant, str(step)).set(1)
            for shift in [*shifts, UNLABELLED]:
                for result in RESULTS:
                    self._requests[(run, variant, shift, result)] = self.requests.labels(run, variant, shift, result)
                for result in GRADED:
                    self._digits[(run, variant, shift, result)] = self.digits.labels(run, variant, shift, result)
            if variant not in self._per_variant:
                self._per_variant[variant] = (self.duration.labels(variant), self.tokens.labels(variant),
                                              self.batch_size.labels(variant))

    def completed(self, run: str, variant: str, shift: str, result: str, seconds: float, tokens: int,
                  digits: tuple[int, int] | None = None) -> None:
        """One completion; ``digits`` = (answer digits right, answer digits in all) when it was graded."""
        self._requests[(run, variant, shift, result)].inc()
        if digits:
            self._digits[(run, variant, shift, "correct")].inc(digits[0])
            self._digits[(run, variant, shift, "incorrect")].inc(digits[1] - digits[0])
        duration, generated, _ = self._per_variant[variant]
        duration.observe(seconds)
        generated.inc(tokens)

    def batch(self, variant: str, size: int) -> None:
        self._per_variant[variant][2].observe(size)

    def error(self, reason: str) -> None:
        self._errors.get(reason, self._errors["internal"]).inc()
