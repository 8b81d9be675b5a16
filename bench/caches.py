"""What the benchmarks keep under bench/cache/, and removing what this version of fracture would never read again.

Two kinds of folder, each named by a hash of what it was built from, with that record beside it (``stamp.json``):

- ``gptneox-<key>``: ``bench.edge``'s pythia-shaped model and its variants (1.2 GB at pythia-70m's size), keyed on
  the architecture, the tools' versions and how each variant is built (``bench.edge.cache_record``);
- ``served-<key>``: the serving benchmark's variants of a sweep's run that the sweep lacks, keyed on the run's
  onnx-fp32 and the graph rewrites' versions (``bench.serving.served_cache_record``).

A model folder is current when it is one of the two models the benchmark builds today (pythia-70m's
architecture and ``--quick``'s, with every edge variant, from today's tools and rewrites); a served folder while
its sweep still lacks the variants it holds, for the run the benchmark picks, from that run's onnx-fp32 and
today's tools. After an upgrade of onnxruntime, optimum or transformers, or of fracture's graph rewrites, the
older folders are stale: nothing reads them again, and each pythia-sized one holds 1.2 GB. ``python -m bench
prune`` removes the stale ones (``--dry-run`` lists them, with what changed); ``python -m bench`` says at the end
of a part when some take space. Each is judged again under its lock before it goes (a folder whose lock a
build holds is kept). A served folder built before folders had a record is kept (a few MB; the next benchmark
that reads it records one). Anything else under bench/cache/ is left alone.

    python -m bench prune [--dry-run]
"""

from __future__ import annotations

import functools
import json
import os
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
    kind, _, key = folder.name.partition("-")
    try:
        recorded = json.loads((folder / STAMP).read_text())
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as exc:
        return f"its {STAMP} cannot be read ({exc})"
    if recorded is not None and not isinstance(recorded, dict):
        return f"its {STAMP} is not a record"
    return (_why_stale_model if kind == "gptneox" else _why_stale_served)(key, recorded)


@functools.cache
def _todays_models() -> dict[str, dict]:
    """{folder key: architecture} of the two models the benchmark builds with this fracture and these tools."""
    return {cache_key(cache_record(arch, VARIANTS)): arch for arch in (PYTHIA_70M, QUICK_ARCH)}


def _why_stale_model(key: str, recorded: dict | None) -> str | None:
    """The benchmark builds two models, pythia-70m's architecture and ``--quick``'s, each with every edge variant:
    a folder of any other key is never read. Its record, where it has one, says what changed."""
    today = _todays_models()
    if key in today:
        return None
    if recorded is None:
        return f"no {STAMP} (built by an older fracture), and not one of today's models"
    if recorded.get("arch") not in today.values():
        return "an architecture the benchmark no longer builds"
    return _changed(recorded, cache_record(recorded["arch"], VARIANTS))


def _why_stale_served(key: str, recorded: dict | None) -> str | None:
    """A served folder is read while its sweep lacks the variants it holds, for the run the benchmark picks, with
    the run's onnx-fp32 and the tools it was built from. One built before folders had a record (a few MB) is kept:
    the next benchmark that reads it records one."""
    from bench.serving import SERVED, _pick, served_cache_key, served_cache_record
    from export.registry import FP32

    if recorded is None:
        return None
    sweep, run = Path(str(recorded.get("sweep", ""))), str(recorded.get("run", ""))
    variants = tuple(recorded.get("variants") or (SERVED,))
    try:
        now = served_cache_record(sweep, run, variants)
        if served_cache_key(now) != key:
            return _changed(recorded, now)
        if _pick(sweep, variants):
            return f"{sweep} now has its own {', '.join(variants)}, which the benchmark serves"
        first = _pick(sweep, (FP32,), current=False)
        if first is None or first[0] != run:
            return f"the benchmark now serves another run of {sweep}"
    except (FileNotFoundError, NotADirectoryError):
        return f"{sweep / run} has no published onnx-fp32 any more"
    except OSError as exc:
        return f"its sweep cannot be read ({exc})"
    return None


def _freed(folder: Path) -> int:
    """Bytes removing ``folder`` gives back (files' apparent sizes): each file once, unless it has links outside
    the folder (the files hard-linked from a sweep stay there)."""
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
    """Remove (or, with ``dry_run``, list) the stale folders of ``root``; returns those removed (or listed). Each
    is judged again under its lock, then renamed out of the way before it is deleted, so a build that starts
    meanwhile makes a folder of its own; a folder whose lock another process holds (a build in progress) is
    kept, and said. A deletion that fails is said and the others go on."""
    from common.files import FolderBusy, folder_lock

    root = root or CACHE
    for leftover in sorted(root.glob(".pruning-*")) if root.is_dir() else []:  # a prune killed while deleting
        shutil.rmtree(leftover, ignore_errors=True)
    done, kept = [], 0
    for stale in stale_caches(root):
        if dry_run:
            say(f"would remove {stale.path} ({human(stale.freed)}): {stale.reason}")
            done.append(stale)
            continue
        doomed = stale.path.with_name(f".pruning-{stale.path.name}")
        try:
            with folder_lock(stale.path, "pruning the benchmark cache"):
                if _why_stale(stale.path) is None:  # made current while this prune ran
                    say(f"kept {stale.path}: in use again")
                    kept += 1
                    continue
                os.rename(stale.path, doomed)
            shutil.rmtree(doomed)
        except FolderBusy as exc:
            say(f"kept {stale.path}: {exc}")
            kept += 1
            continue
        except OSError as exc:
            say(f"could not remove {stale.path}: {exc}")
            kept += 1
            continue
        say(f"removed {stale.path} ({human(stale.freed)}): {stale.reason}")
        done.append(stale)
    if not done and not kept:
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
