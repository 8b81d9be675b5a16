"""Where the accuracy table comes from. Every source yields accuracy.csv's rows (docs/design.md, Artifacts):
``{run, step, variant, split, n, correct}``.

- ``accuracy.csv`` written by offline evaluation;
- a Prometheus server's HTTP API (instant queries through prometheus-api-client);
- a direct scrape of a server's ``/metrics`` (prometheus_client's own parser), for
  set-ups without Prometheus.

Served traffic is counted by ``fracture_requests_total{model,variant,shift,result}``:
``n`` is the graded requests (correct + incorrect; ungraded ones carry no answer) and
``correct`` the correct ones. The checkpoint step of a served model comes from
``fracture_model_info{model,variant,step}``; without it the step is recorded as -1. The
per-digit measure comes from ``fracture_answer_digits_total{model,variant,shift,result}``
(answer digits right / wrong of graded requests).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from serve.metrics import UNLABELLED
from telemetry.population import DataWarning

REQUESTS = "fracture_requests_total"
DIGITS = "fracture_answer_digits_total"
MODEL_INFO = "fracture_model_info"
GRADED = ("correct", "incorrect")
NO_STEP = -1


class SourceError(RuntimeError):
    """A source that could not be read; the message says which and why."""


class NoGradedTraffic(SourceError):
    """The source answered but holds no graded request yet: the normal state before any traffic."""


def from_csv(path) -> list[dict]:
    """The rows of an accuracy table, checked; beside its sweep.yaml (the table a sweep or a replay wrote),
    against the split names of the sweep's task too."""
    from pathlib import Path

    from common.accuracy_table import read_table
    from tasks.dataset import sweep_splits

    sweep = Path(path).parent
    try:
        splits = sweep_splits(sweep) if (sweep / "sweep.yaml").is_file() else None
        rows = read_table(path, splits)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read accuracy table {path}: {exc}") from exc
    if not rows:
        raise SourceError(f"accuracy table {path} is missing or empty")
    return rows


def rows_from_samples(requests: Iterable[tuple[dict, float]], info: Iterable[dict] = (),
                      digits: Iterable[tuple[dict, float]] = ()) -> list[dict]:
    """Counter samples (labels, value) -> accuracy rows, one per (model, variant, shift).

    ``digits`` (samples of the answer-digit counter) add ``digit_correct`` and ``digit_total``,
    the per-digit measure, where the server recorded them.
    """
    steps = {(i["model"], i["variant"]): int(float(i["step"])) for i in info if "step" in i}
    cells: dict[tuple[str, str, str], list[int]] = {}
    unlabelled = 0
    for labels, value in requests:
        if labels.get("result") not in GRADED:
            continue
        if labels.get("shift") == UNLABELLED:  # graded, but no split to put it in
            unlabelled += int(round(float(value)))
            continue
        key = (labels["model"], labels["variant"], labels["shift"])
        cell = cells.setdefault(key, [0, 0])
        count = int(round(float(value)))
        cell[0] += count
        if labels["result"] == "correct":
            cell[1] += count
    if unlabelled:
        warnings.warn(f"{unlabelled} graded request(s) without a shift label (shift=\"{UNLABELLED}\"): left out, "
                      "as no split holds them", DataWarning, stacklevel=2)
    digit_cells: dict[tuple[str, str, str], list[int]] = {}
    for labels, value in digits:
        if labels.get("result") in GRADED and labels.get("shift") != UNLABELLED:
            cell = digit_cells.setdefault((labels["model"], labels["variant"], labels["shift"]), [0, 0])
            count = int(round(float(value)))
            cell[0] += count
            cell[1] += count if labels["result"] == "correct" else 0
    rows = []
    for (m, v, s), (n, c) in sorted(cells.items()):
        if n > 0:
            row = {"run": m, "step": steps.get((m, v), NO_STEP), "variant": v, "split": s, "n": n, "correct": c}
            total, right = digit_cells.get((m, v, s), (0, 0))
            if total > 0:
                row |= {"digit_correct": right, "digit_total": total}
            rows.append(row)
    if not rows:
        raise NoGradedTraffic(f"no graded {REQUESTS} samples found (send requests with `expected` set, e.g. "
                              "python -m serve replay)")
    return rows


def from_scrape(url: str, timeout: float = 10.0) -> list[dict]:
    """GET a server's /metrics and rebuild the table from its counters."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        token = os.environ.get("FRACTURE_API_TOKEN", "")  # the server's /metrics needs it when one is set
        resp = requests.get(target, timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else None)
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise SourceError(f"cannot scrape {target}: {exc}") from exc
    req, info, digits = [], [], []
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == REQUESTS:
                req.append((dict(sample.labels), sample.value))
            elif sample.name == DIGITS:
                digits.append((dict(sample.labels), sample.value))
            elif sample.name == MODEL_INFO:
                info.append(dict(sample.labels))
    return rows_from_samples(req, info, digits)


def from_prometheus(url: str, window: str | None = None, timeout: float = 10.0) -> list[dict]:
    """Instant queries of the request counters (``increase`` over ``window`` when given)."""
    import requests
    from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
    from urllib3.util.retry import Retry

    by = "model, variant, shift, result"
    counter = f"increase({REQUESTS}[{window}])" if window else REQUESTS
    digit_counter = f"increase({DIGITS}[{window}])" if window else DIGITS
    try:
        # One quick retry: the watch job has its own backoff, and `analyze` should fail fast.
        prom = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=Retry(total=1, backoff_factor=0.2))
        result = prom.custom_query(f"sum by ({by}) ({counter})")
        info = prom.custom_query(f"max by (model, variant, step) ({MODEL_INFO})")
        digits = prom.custom_query(f"sum by ({by}) ({digit_counter})")
    except (requests.RequestException, PrometheusApiClientException) as exc:
        raise SourceError(f"Prometheus at {url} did not answer: {exc}") from exc
    return rows_from_samples(((r["metric"], float(r["value"][1])) for r in result), (r["metric"] for r in info),
                             ((r["metric"], float(r["value"][1])) for r in digits))

