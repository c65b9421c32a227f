"""Which models exist and which are loaded: resolves references against the store on every
request (so new versions are served without a restart) and caches loaded models."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from speechadapt.asr import AsrModel, ModelNotFound, ModelStore, load_model
from speechadapt.asr.package import read_card
from speechadapt.asr.store import ModelRef

BUILTIN_DEFAULT = "base-en"


class ModelRegistry:
    def __init__(self, store_root: Path, default_model: str | None = None, device: str = "cpu"):
        self.store = ModelStore(store_root)
        self.default_model = default_model
        self.device = device
        self._loaded: dict[tuple[str, int, str], AsrModel] = {}
        self._lock = threading.Lock()

    def default_ref(self) -> str:
        if self.default_model:
            return self.default_model
        if self.store.versions(BUILTIN_DEFAULT):
            return BUILTIN_DEFAULT
        names = self.store.names()
        if len(names) == 1:
            return names[0]
        raise ModelNotFound(
            "no default model: name one in config.model, or start the server with --default-model "
            f"(available: {', '.join(names) or 'none'})"
        )

    def resolve(self, ref: str) -> ModelRef:
        """"" = default; raises ValueError (bad reference) or ModelNotFound."""
        return self.store.resolve(ref or self.default_ref())

    def load(self, ref: ModelRef) -> AsrModel:
        key = (ref.name, ref.version, str(ref.path))
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                model = load_model(ref.path, device=self.device)
                model.ref = ref
                self._loaded[key] = model
            return model

    async def get(self, ref: str) -> AsrModel:
        mref = self.resolve(ref)
        key = (mref.name, mref.version, str(mref.path))
        model = self._loaded.get(key)
        return model if model is not None else await asyncio.to_thread(self.load, mref)

    def cards(self, name: str = "", all_versions: bool = False) -> list[tuple[ModelRef, object]]:
        names = [name] if name else self.store.names()
        out = []
        for n in names:
            refs = self.store.versions(n)
            for r in refs if all_versions else refs[-1:]:
                out.append((r, read_card(r.path)))
        return out
