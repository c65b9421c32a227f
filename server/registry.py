"""Which models exist and which are loaded: resolves references against the store on every
request (so new versions are served without a restart) and caches loaded models.

Loaded models are kept in an LRU bounded by a memory budget (bytes of parameters and buffers). When a load
takes the total over the budget, the least recently requested models that no request is using are unloaded.
A model still in use is never unloaded; even if it were, the streams in flight hold their own reference, and an
unloaded model that is still alive is handed out again instead of being loaded twice.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from speechadapt.asr import AsrModel, ModelNotFound, ModelStore, load_model
from speechadapt.asr.package import read_card
from speechadapt.asr.store import ModelRef
from speechadapt.server.metrics import Metrics

BUILTIN_DEFAULT = "base-en"
log = logging.getLogger(__name__)

Key = tuple[str, int, str]


def model_bytes(model: AsrModel) -> int:
    """Memory a loaded model holds (its weights)."""
    return model.memory_bytes()


@dataclass
class _Entry:
    model: AsrModel
    nbytes: int


class ModelRegistry:
    def __init__(self, store_root: Path, default_model: str | None = None, device: str = "cpu",
                 memory_budget_bytes: int = 1024 * 1024 * 1024, threads: int = 0, metrics: Metrics | None = None):
        self.store = ModelStore(store_root)
        self.metrics = metrics or Metrics()
        self.default_model = default_model
        self.device = device
        self.threads = threads
        self.memory_budget_bytes = memory_budget_bytes
        self._loaded: OrderedDict[Key, _Entry] = OrderedDict()  # least recently requested first
        self._unloaded: weakref.WeakValueDictionary[Key, AsrModel] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._idle_refs: int | None = None  # sys.getrefcount of a model only the registry holds
        self.loads = 0  # models read from disk (a reload after eviction counts again)
        self.evictions = 0

    def prepare_default(self) -> str:
        """Pin the default model for the server's life (a store that gains models never changes it): the one
        configured, else whisper-tiny-en (built from the bundled weights on first start), else base-en."""
        if not self.default_model:
            from speechadapt.asr.importers import DEFAULT_WHISPER, ensure_default_whisper

            try:
                has_whisper = ensure_default_whisper(self.store.root)
            except Exception as e:  # noqa: BLE001 - a broken bundled model must not stop base-en from serving
                log.error("cannot build %s from the bundled weights: %s", DEFAULT_WHISPER, e)
                has_whisper = False
            self.default_model = DEFAULT_WHISPER if has_whisper else BUILTIN_DEFAULT
        log.info("default model: %s", self.default_model)
        return self.default_model

    def default_ref(self) -> str:
        if self.default_model:
            return self.default_model
        if self.store.versions(BUILTIN_DEFAULT):
            return BUILTIN_DEFAULT
        raise ModelNotFound(
            "no default model: name one in config.model, or start the server with --default-model "
            f"(available: {', '.join(self.store.names()) or 'none'})"
        )

    def resolve(self, ref: str) -> ModelRef:
        """"" = default; raises ValueError (bad reference) or ModelNotFound."""
        return self.store.resolve(ref or self.default_ref())

    @staticmethod
    def _key(ref: ModelRef) -> Key:
        return (ref.name, ref.version, str(ref.path))

    def load(self, ref: ModelRef) -> AsrModel:
        """The loaded model for `ref` (loading it, and unloading idle ones beyond the budget, when needed)."""
        key = self._key(ref)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                return entry.model
            model = self._unloaded.pop(key, None)  # unloaded but still serving a stream: take it back
            fresh = model is None
            if fresh:
                model = load_model(ref.path, device=self.device, threads=self.threads)
                model.ref = ref
                self.loads += 1
                self.metrics.model_loaded(str(ref))
            entry = _Entry(model, model_bytes(model))
            del model
            self._loaded[key] = entry
            if fresh and self._idle_refs is None:
                self._idle_refs = sys.getrefcount(entry.model)
            self._evict(keep=key)
            return entry.model

    async def get(self, ref: str) -> AsrModel:
        mref = self.resolve(ref)
        with self._lock:
            entry = self._loaded.get(self._key(mref))
            if entry is not None:
                self._loaded.move_to_end(self._key(mref))
                return entry.model
        return await asyncio.to_thread(self.load, mref)

    def loaded(self) -> list[str]:
        """`name@version` of the models held, least recently requested first."""
        with self._lock:
            return [f"{k[0]}@{k[1]}" for k in self._loaded]

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._loaded.values())

    def _in_use(self, entry: _Entry) -> bool:
        # Requests reference the model (their session and stream objects); the registry's own references are
        # counted when the entry is made, with the same number of temporaries as here.
        return self._idle_refs is None or sys.getrefcount(entry.model) > self._idle_refs

    def _evict(self, keep: Key) -> None:
        total = sum(e.nbytes for e in self._loaded.values())
        for key in list(self._loaded):
            if total <= self.memory_budget_bytes:
                break
            entry = self._loaded[key]
            if key == keep or self._in_use(entry):
                continue
            del self._loaded[key]
            self._unloaded[key] = entry.model
            total -= entry.nbytes
            self.evictions += 1
            self.metrics.model_unloaded(f"{key[0]}@{key[1]}")
            log.info("unloaded %s@%d (%.1f MiB) to stay within the %.0f MiB model memory budget",
                     key[0], key[1], entry.nbytes / 2**20, self.memory_budget_bytes / 2**20)
        if total > self.memory_budget_bytes:
            log.warning("loaded models hold %.1f MiB, over the %.0f MiB budget: the rest are in use",
                        total / 2**20, self.memory_budget_bytes / 2**20)

    def cards(self, name: str = "", all_versions: bool = False) -> list[tuple[ModelRef, object]]:
        names = [name] if name else self.store.names()
        out = []
        for n in names:
            refs = self.store.versions(n)
            for r in refs if all_versions else refs[-1:]:
                out.append((r, read_card(r.path)))
        return out
