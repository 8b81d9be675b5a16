"""The export summary: per variant, its size, effective bits and mean accuracy per split
next to torch-fp32 on the same checkpoints (the table the export issue asks for)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

from common.accuracy_table import TORCH_VARIANT, read_table
from export.manifest import footprint_bytes


def variant_table(manifests: list[dict], table: list[dict]) -> list[dict]:
    """One row per variant: checkpoints, mean MB, mean effective bits, mean accuracy per split."""
    points = {(m["run"], int(m["step"])) for m in manifests}
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for m in manifests:
        by_variant[m["variant"]].append(m)
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in table:
        if (r["run"], int(r["step"])) in points:
            acc[(r["variant"], r["split"])].append(r["correct"] / r["n"])
    splits = sorted({s for _, s in acc}, key=lambda s: (s != "id", s))
    rows = []
    for name in [TORCH_VARIANT, *by_variant]:
        ms = by_variant.get(name, [])
        rows.append({
            "variant": name, "checkpoints": len(ms) or len(points),
            "mb": mean(footprint_bytes(m) for m in ms) / 1e6 if ms else None,
            "bits": mean(m["effective_bits_per_param"] for m in ms) if ms else 32.0,
            "accuracy": {s: mean(acc[(name, s)]) if acc.get((name, s)) else None for s in splits},
        })
    return rows


def format_summary(summary: dict, sweep: str | Path) -> str:
    table = read_table(Path(sweep) / "accuracy.csv")
    rows = variant_table(summary["manifests"], table)
    splits = list(rows[0]["accuracy"]) if rows else []
    width = max([14, *(len(r["variant"]) for r in rows)])  # noise@ort-int8-all is longer than the rest
    head = f"{'variant':{width}} {'ckpts':>5} {'MB':>7} {'bits/param':>10} " + " ".join(f"{s:>14}" for s in splits)
    lines = [head, "-" * len(head)]
    for r in rows:
        mb = f"{r['mb']:7.3f}" if r["mb"] is not None else f"{'-':>7}"
        accs = " ".join(f"{a:14.3f}" if a is not None else f"{'-':>14}" for a in r["accuracy"].values())
        lines.append(f"{r['variant']:{width}} {r['checkpoints']:5d} {mb} {r['bits']:10.2f} {accs}")
    stale = summary.get("rebuilt_stale", 0)
    lines.append(f"built {summary['built']}" + (f" ({stale} made by older graph rewrites)" if stale else "")
                 + f", reused {summary['reused']}, evaluated {summary['evaluated']}, "
                 f"skipped {len(summary['skipped'])} variant(s), failed {len(summary['failed'])}, "
                 f"{summary['seconds']:.0f}s")
    for name, reason in summary["skipped"].items():
        lines.append(f"  skipped {name}: {reason}")
    return "\n".join(lines)
