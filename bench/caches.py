"""What the benchmarks keep under bench/cache/, and removing what this version of fracture would never read again.

Two kinds of folder, each named by a hash of what it was built from, with that record beside it (``stamp.json``):

- ``gptneox-<key>``: ``bench.edge``'s pythia-shaped model and its variants (1.2 GB at pythia-70m's size), keyed on
  the architecture, the tools' versions and how each variant is built (``bench.edge.cache_record``);
- ``served-<key>``: the serving benchmark's variants of a sweep's run that the sweep lacks, keyed on the run's
  onnx-fp32 and the graph rewrites' versions (``bench.serving.served_cache_record``).

A folder is current when its record, made again with today's versions, hashes to its name. After an upgrade of
onnxruntime, optimum or transformers, or of fracture's graph rewrites, the older folders are stale: nothing reads
them again, and each pythia-sized one holds 1.2 GB. ``python -m bench prune`` removes the stale ones
(``--dry-run`` lists them, with what changed); ``python -m bench`` says at the end of a part when some take space.
A folder whose lock a build holds is skipped. Anything else under bench/cache/ is left alone.

    python -m bench prune [--dry-run]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.edge import CACHE, QUICK_ARCH, STAMP, VARIANTS, cache_key, cache_record
from bench.gpu_check import PYTHIA_70M

KINDS = ("gptneox", "served")


@dataclass(frozen=True)
class Stale:
    path: Path
    reason: str  # what changed, in words
    freed: int  # bytes removing it gives back (files hard-linked from a sweep stay there, and are not counted)


def _changed(recorded: dict, now: dict) -> str:
    """The fields of two records that differ, as ``name old → new``."""
    diffs = [f"{k} {recorded.get(k)!r} → {now.get(k)!r}" for k in sorted(set(recorded) | set(now))
             if k not in ("arch", "onnx_fp32_manifest") and recorded.get(k) != now.get(k)]
    if recorded.get("onnx_fp32_manifest") != now.get("onnx_fp32_manifest"):
        diffs.append("the run's onnx-fp32 was exported again")
    return "; ".join(diffs) or "built from other inputs"


def _why_stale(folder: Path) -> str | None:
    """None for a folder this fracture reads; else why it never will."""
    from bench.serving import served_cache_key, served_cache_record

    kind, _, key = folder.name.partition("-")
    try:
        recorded = json.loads((folder / STAMP).read_text())
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as exc:
        return f"its {STAMP} cannot be read ({exc})"
    if kind == "gptneox":
        if recorded is None:  # built before folders had a record: current only as one of the benchmark's own models
            known = {cache_key(cache_record(arch, VARIANTS)) for arch in (PYTHIA_70M, QUICK_ARCH)}
            return None if key in known else f"no {STAMP} (built by an older fracture), not one of today's models"
        try:
            now = cache_record(recorded["arch"], tuple(recorded["variants"]))
        except (KeyError, TypeError) as exc:
            return f"its variants are no longer what the registry has ({exc})"
        return None if cache_key(now) == key else _changed(recorded, now)
    if recorded is None:
        return f"no {STAMP} (built by an older fracture)"
    sweep, run = Path(recorded.get("sweep", "")), recorded.get("run", "")
    try:
        now = served_cache_record(sweep, run)
    except (FileNotFoundError, NotADirectoryError):
        return f"{sweep / run} has no published onnx-fp32 any more"
    except OSError as exc:
        return f"its sweep cannot be read ({exc})"
    return None if served_cache_key(now) == key else _changed(recorded, now)


def _freed(folder: Path) -> int:
    """Bytes removing ``folder`` gives back: each file once, unless it has links outside the folder (the files
    hard-linked from a sweep stay there)."""
    inodes: dict[tuple[int, int], list[int]] = {}  # (device, inode) -> [links seen here, links in all, size]
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file() and not p.is_symlink():
            inodes.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])[0] += 1
    return sum(size for seen, links, size in inodes.values() if seen >= links)


def stale_caches(root: Path | None = None) -> list[Stale]:
    """The folders of ``root`` (bench/cache/) this fracture would never read again (the kinds above only)."""
    root = root or CACHE
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.is_symlink() and folder.name.partition("-")[0] in KINDS:
            reason = _why_stale(folder)
            if reason:
                found.append(Stale(folder, reason, _freed(folder)))
    return found


def human(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError


def prune(root: Path | None = None, dry_run: bool = False, say=print) -> list[Stale]:
    """Remove (or, with ``dry_run``, list) the stale folders of ``root``; returns those removed (or listed). A
    folder whose lock another process holds (a build in progress) is skipped and said."""
    from common.files import FolderBusy, folder_lock

    root = root or CACHE
    done = []
    for stale in stale_caches(root):
        if dry_run:
            say(f"would remove {stale.path} ({human(stale.freed)}): {stale.reason}")
            done.append(stale)
            continue
        try:
            with folder_lock(stale.path, "pruning the benchmark cache"):
                shutil.rmtree(stale.path)
        except FolderBusy as exc:
            say(f"kept {stale.path}: {exc}")
            continue
        say(f"removed {stale.path} ({human(stale.freed)}): {stale.reason}")
        done.append(stale)
    if not done:
        say(f"nothing stale under {root}")
    elif dry_run:
        say(f"{human(sum(s.freed for s in done))} to free: `python -m bench prune` removes them")
    return done


def hint(root: Path | None = None) -> str | None:
    """One line when stale folders take space under ``root`` (the end of every benchmark part), else None."""
    root = root or CACHE
    try:
        stale = stale_caches(root)
    except Exception as exc:  # noqa: BLE001 - a hint must never fail the benchmark it follows
        return f"(could not check {root} for stale caches: {exc})"
    if not stale:
        return None
    return (f"{root}: {len(stale)} folder(s) built by other versions hold {human(sum(s.freed for s in stale))}; "
            "`make bench-prune` removes them (`python -m bench prune --dry-run` lists them)")
