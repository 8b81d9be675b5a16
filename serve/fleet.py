"""The fleet: every (run, variant) exported under a sweep, addressed as "<run>/<variant>".

Each variant's manifest is verified (sha256 of every file) when the fleet is built and
again whenever its session is reloaded after being released; a tampered or incomplete variant is refused
with a logged reason, and the rest are served. Only final-checkpoint variants that run
on ONNX Runtime are served (variants/step-<N>/ and torch-only variants are left out).
With a memory budget, sessions load on first use and the least recently used ones are
released when the budget would be exceeded; the estimate is the variant's file size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from common.manifest import read_manifest, read_verified, verify
from export.manifest import footprint_bytes
from export.runtime import MODEL_FILE, ROW_MODEL_FILE, OnnxCausalLM, default_providers
from serve.config import ServeConfig
from serve.schema import ModelInfo

log = logging.getLogger("fracture.serve")


class ModelUnavailable(RuntimeError):
    pass


class ModelEntry(ModelInfo):
    """A servable variant: what clients see of it (``ModelInfo``) and what the server needs to load it."""

    folder: Path
    bytes: int  # of its files, from its manifest
    digit_format: str
    providers: list = []  # ONNX Runtime providers (pydantic copies the default per entry)
    files: tuple[str, ...] = ()  # the files its manifest lists

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(**self.model_dump(include=set(ModelInfo.model_fields)))


def _providers(cfg: ServeConfig) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if cfg.provider == "cpu":
        return ["CPUExecutionProvider"]
    if cfg.provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError("provider=cuda, but this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return default_providers()


def _variant_providers(variant: str, folder: Path) -> list | None:
    """The providers a variant must run on (the registry's ``Variant.providers``: TensorRT's engine, the
    per-token int8 graphs' CPU), or None for the server's own choice."""
    from export.registry import get_variant

    try:
        spec = get_variant(variant)
    except (KeyError, ValueError):  # a variant this version does not know: its manifest vouches for it
        return None
    return spec.providers(folder) if spec.providers else None


def discover(cfg: ServeConfig) -> tuple[list[ModelEntry], dict[str, str]]:
    """(servable entries, {model id: why refused}) under ``cfg.sweep``."""
    sweep = Path(cfg.sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep} does not exist: run `python -m train sweep` and `python -m export` first")
    providers = _providers(cfg)
    entries, refused = [], {}
    for manifest_path in sorted(sweep.glob("*/variants/*/manifest.json")):
        folder = manifest_path.parent
        run, variant = folder.parent.parent.name, folder.name
        model_id = f"{run}/{variant}"
        if (cfg.variants and variant not in cfg.variants) or (cfg.runs and run not in cfg.runs):
            continue
        problem = verify(folder, "variant")
        if problem:
            refused[model_id] = problem.replace(str(folder), model_id)  # no server paths in what clients see
            log.warning("refusing %s: %s", model_id, problem)
            continue
        m = read_manifest(folder)
        if (m.get("run"), m.get("variant")) != (run, variant):  # what it is comes from its manifest, not its folder
            problem = (f"its manifest describes {m.get('run')}/{m.get('variant')}, not the {model_id} its folder "
                       "is named for (a copied or renamed folder: export it again)")
            refused[model_id] = problem
            log.warning("refusing %s: %s", model_id, problem)
            continue
        if m.get("runner") != "onnx":
            log.info("not serving %s: a %s variant runs in torch, not on the edge server", model_id, m.get("backend"))
            continue
        entry_providers = _variant_providers(variant, folder) or providers
        fracture = folder / "fracture.json"
        digit_format = (json.loads(fracture.read_text()).get("digit_format", "compact") if fracture.is_file()
                        else "compact")
        # without the row graph, what a session holds is the model's footprint (the row graph stays unopened)
        size = int(m.get("total_bytes", 0)) if cfg.row_graph else footprint_bytes(m)
        entries.append(ModelEntry(id=model_id, run=run, variant=variant, step=int(m["step"]),
                                  bits=int(m["weight_bits"]), backend=m["backend"], folder=folder,
                                  bytes=size, digit_format=digit_format,
                                  providers=entry_providers, files=tuple(m.get("files", {}))))
    return entries, refused


class Fleet:
    def __init__(self, cfg: ServeConfig, entries: list[ModelEntry], refused: dict[str, str]):
        self.cfg = cfg
        self.entries = {e.id: e for e in entries}
        self.refused = dict(refused)
        self.budget = int(cfg.memory_budget_mb * 1e6)
        self._loaded: OrderedDict[str, OnnxCausalLM] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> Fleet:
        return cls(cfg, *discover(cfg))

    @property
    def lazy(self) -> bool:
        return self.budget > 0

    def load_all(self) -> None:
        """Eager mode: open every session now, so the first request pays nothing. Sessions open in
        parallel (ONNX Runtime builds a session without holding the GIL): 192 demo models take about
        half the time of one after another on 2 cores."""
        from concurrent.futures import ThreadPoolExecutor

        def open_one(model_id: str) -> None:
            with contextlib.suppress(ModelUnavailable):  # refused and logged; the rest are served
                runner = self._open(self.entries[model_id])
                with self._lock:
                    self._loaded[model_id] = runner

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(open_one, [i for i in self.entries if i not in self._loaded]))

    def loaded_ids(self) -> list[str]:
        return list(self._loaded)

    def loaded(self, model_id: str) -> OnnxCausalLM | None:
        """The live session if there is one (no loading, no thread hop), marked as recently used."""
        runner = self._loaded.get(model_id)
        if runner is not None and self.lazy:
            with self._lock:
                if model_id in self._loaded:
                    self._loaded.move_to_end(model_id)
        return runner

    def runner(self, model_id: str) -> OnnxCausalLM:
        """The live session of ``model_id``, loading (and verifying) it if needed."""
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            entry = self.entries.get(model_id)
            if entry is None:
                raise ModelUnavailable(self.refused.get(model_id, f"unknown model {model_id!r}"))
            if self.lazy:
                used = sum(self.entries[i].bytes for i in self._loaded)
                while self._loaded and used + entry.bytes > self.budget:
                    old, _ = self._loaded.popitem(last=False)
                    used -= self.entries[old].bytes
                    log.info("released %s (memory budget %.0f MB)", old, self.cfg.memory_budget_mb)
            runner = self._open(entry)
            self._loaded[model_id] = runner
            return runner

    def _open(self, entry: ModelEntry) -> OnnxCausalLM:
        """Verify the variant's files and open its session on the very graph bytes that were hashed (a file
        changed after discovery, or between the check and the load, is never served); refuses it on failure."""
        started = time.perf_counter()
        external = any(n != MODEL_FILE and n.endswith((".onnx_data", ".data")) for n in entry.files)
        # the graphs are hashed once, below, from the bytes the sessions are built from (the row graph where the
        # manifest lists one: export.runtime.ROW_MODEL_FILE)
        rows = (ROW_MODEL_FILE,) if self.cfg.row_graph and ROW_MODEL_FILE in entry.files else ()
        graphs = () if external else (MODEL_FILE, *rows)
        problem = verify(entry.folder, "variant", skip=frozenset(graphs))
        if problem:
            raise self._refusal(entry.id, problem)
        try:  # external weights: by path
            graph, row_bytes = (read_verified(entry.folder, n) if n in graphs else None
                                for n in (MODEL_FILE, ROW_MODEL_FILE))
        except (OSError, ValueError) as exc:
            raise self._refusal(entry.id, str(exc)) from None
        try:
            runner = OnnxCausalLM(entry.folder, threads=self.cfg.threads, providers=entry.providers,
                                  model_bytes=graph, row_model_bytes=row_bytes, row_graph=self.cfg.row_graph)
        except Exception as exc:  # noqa: BLE001 - a broken variant must not take the server down
            raise self._refusal(entry.id, f"cannot open session: {type(exc).__name__}: {exc}") from None
        log.info("loaded %s in %.2fs", entry.id, time.perf_counter() - started)
        return runner

    def _refusal(self, model_id: str, reason: str) -> ModelUnavailable:
        """Take the model out of the fleet (refused, with ``reason``); returns the error to raise."""
        entry = self.entries.get(model_id)
        if entry is not None:  # clients see the model id, never the server's file paths
            reason = reason.replace(str(entry.folder), model_id)
        self.entries.pop(model_id, None)
        self.refused[model_id] = reason
        log.warning("refusing %s: %s", model_id, reason)
        return ModelUnavailable(reason)
