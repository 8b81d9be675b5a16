"""The replay client: labelled traffic from the task's eval splits to every served model.

Sends every item of every split (or the first ``eval_items`` of each, the same items for
every model) to every model with its ``shift`` and ``expected`` answer, at a bounded
concurrency, retrying 503s after their Retry-After, within an overall deadline. The
client is aiohttp: at 32 concurrent connections httpx's async pool spent more time than
the server (358 vs 5,655 requests/s against a fixed-answer server on 2 cores). The
accuracy table it observed is written in accuracy.csv's format (docs/design.md, Artifacts), so it can be
compared row for row with the offline one. Grading is the server's (``correct``); the
per-digit columns are computed here with the same grader from the returned text.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

from common.accuracy_table import upsert_rows
from tasks.dataset import read_jsonl, split_of_file
from tasks.grader import grade
from train.evaluate import max_answer_tokens


def load_splits(data_dir: Path, eval_items: int = 0, added: dict[str, Path] | None = None) -> dict[str, list[dict]]:
    """{split label: items}: dev.jsonl is the in-domain split ``id``; train.jsonl is not sent. ``added``:
    {split: JSONL file} of splits graded after training (a sweep's extra-splits.json), sent as well."""
    data_dir = Path(data_dir)
    if not (data_dir / "dev.jsonl").is_file():
        raise FileNotFoundError(f"{data_dir} has no dev.jsonl: pass the data/<task-hash>/ folder of the sweep")
    files = {split_of_file(path.stem): path for path in sorted(data_dir.glob("*.jsonl")) if path.stem != "train"}
    splits = {}
    for name, path in {**files, **(added or {})}.items():
        items = read_jsonl(path)
        splits[name] = items[:eval_items] if eval_items else items
    return splits


async def _send(client: aiohttp.ClientSession, body: dict, deadline: float, retries: int) -> dict:
    for _ in range(retries + 1):
        if time.monotonic() > deadline:
            raise TimeoutError("replay deadline passed")
        async with client.post("/v1/completions", json=body) as resp:
            if resp.status == 503:
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                continue
            if resp.status != 200:
                raise RuntimeError(f"{body['model']}: HTTP {resp.status}: {(await resp.text())[:200]}")
            return await resp.json()
    raise RuntimeError(f"{body['model']}: still overloaded after {retries} retries")


async def replay_async(url: str, data_dir: Path, models: list[str] | None = None, concurrency: int = 32,
                       eval_items: int = 0, max_tokens: int = 0, token: str = "", deadline_s: float = 3600,
                       retries: int = 20, progress: bool = True, added: dict[str, Path] | None = None
                       ) -> list[dict]:
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    splits = load_splits(data_dir, eval_items, added)
    # offline evaluation's budget (longest answer + 2), so per-digit scores match too
    max_tokens = max_tokens or max_answer_tokens(splits)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as client:
        async with client.get("/v1/models") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET /v1/models: HTTP {resp.status}: {(await resp.text())[:200]}")
            fleet = {m["id"]: m for m in (await resp.json())["data"]}
        chosen = list(fleet) if not models or models == ["all"] else models
        unknown = sorted(set(chosen) - set(fleet))
        if unknown:
            raise ValueError(f"not served: {unknown}")
        work = [(m, split, it) for m in chosen for split, items in splits.items() for it in items]
        deadline = time.monotonic() + deadline_s
        gate = asyncio.Semaphore(concurrency)
        cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        bar = tqdm(total=len(work), desc="replay", unit="req", disable=not progress, mininterval=0.5)

        async def one(model: str, split: str, item: dict) -> None:
            async with gate:
                out = await _send(client, {"model": model, "prompt": item["prompt"], "max_tokens": max_tokens,
                                           "temperature": 0, "shift": split, "expected": item["answer"]},
                                  deadline, retries)
            g = grade(out["choices"][0]["text"], item["answer"])
            cell = cells[(model, split)]
            cell[0] += 1
            cell[1] += bool(out["correct"])
            cell[2] += g.digit_correct
            cell[3] += g.digit_total
            bar.update(1)

        try:
            await asyncio.gather(*(one(*w) for w in work))
        finally:
            bar.close()
    return [{"run": fleet[m]["run"], "step": fleet[m]["step"], "variant": fleet[m]["variant"], "split": s,
             "n": n, "correct": c, "digit_correct": dc, "digit_total": dt}
            for (m, s), (n, c, dc, dt) in sorted(cells.items())]


def replay(url: str, data_dir: Path, out: Path | None = None, **kw) -> list[dict]:
    rows = asyncio.run(replay_async(url, data_dir, **kw))
    if out:
        upsert_rows(out, rows)
    return rows
