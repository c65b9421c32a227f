"""The speech science shared by serving and training: audio, features, tokenizer,
model, package format, decoding and streaming.

Names are imported on first use, so light modules (`speechadapt.asr.text`) load without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Hypothesis": "decoding", "Word": "decoding",
    "EvalResult": "evaluation", "evaluate": "evaluation",
    "AsrModel": "inference", "load_model": "inference",
    "PackageError": "package",
    "ModelNotFound": "store", "ModelStore": "store",
    "EndpointConfig": "streaming", "Stream": "streaming",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"speechadapt.asr.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speechadapt.asr' has no attribute {name!r}")
