"""The speech science shared by serving and training: audio, features, tokenizer,
model, package format, decoding and streaming."""

from speechadapt.asr.decoding import Hypothesis, Word
from speechadapt.asr.evaluate import EvalResult, evaluate
from speechadapt.asr.inference import AsrModel, load_model
from speechadapt.asr.package import PackageError
from speechadapt.asr.store import ModelNotFound, ModelStore
from speechadapt.asr.streaming import EndpointConfig, Stream

__all__ = [
    "AsrModel", "EndpointConfig", "EvalResult", "Hypothesis", "ModelNotFound", "ModelStore",
    "PackageError", "Stream", "Word", "evaluate", "load_model",
]
