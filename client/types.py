"""Public value types of the client: configs in, results and model cards out.

Plain frozen dataclasses with converters from the speechadapt.v1 messages, so
callers never handle protobuf objects unless they want to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from speechadapt.v1 import models_pb2, recognizer_pb2

MIN_RATE, MAX_RATE = 8000, 48000  # what the server accepts
MAX_CHANNELS = 8
MAX_ALTERNATIVES = 10
ENCODINGS = ("LINEAR16", "WAV", "FLAC")


class SpeechAdaptError(RuntimeError, grpc.RpcError):
    """A failed call: `code` is the gRPC status name ("INVALID_ARGUMENT"), `message` the server's details.

    str(err) reads "CODE: message". The original grpc.RpcError is `__cause__`.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status_code(self) -> grpc.StatusCode:
        """`code` as a grpc.StatusCode (UNKNOWN for names grpc does not define)."""
        return getattr(grpc.StatusCode, self.code, grpc.StatusCode.UNKNOWN)

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> SpeechAdaptError:
        """Wrap a grpc.RpcError (a grpc.Call or grpc.aio.AioRpcError) keeping its code and details."""
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else None
        return cls(code.name if isinstance(code, grpc.StatusCode) else str(code), details or str(err))


def seconds(d: Duration) -> float:
    """google.protobuf.Duration -> seconds (microsecond precision)."""
    return round(d.seconds + d.nanos / 1e9, 6)


def _unit(x: float) -> float:
    """A 0..1 float32 score from the wire, without float32 noise (0.8999999761 -> 0.9)."""
    return round(float(x), 4)


@dataclass(frozen=True)
class Word:
    """A recognised word with its offsets from the start of the audio, in seconds."""

    word: str
    start: float
    end: float
    confidence: float = 0.0

    @classmethod
    def from_proto(cls, w: recognizer_pb2.WordInfo) -> Word:
        return cls(w.word, seconds(w.start_offset), seconds(w.end_offset), _unit(w.confidence))


@dataclass(frozen=True)
class Alternative:
    """One hypothesis of an N-best list."""

    transcript: str
    confidence: float = 0.0
    words: tuple[Word, ...] = ()

    @classmethod
    def from_proto(cls, a: recognizer_pb2.SpeechRecognitionAlternative) -> Alternative:
        return cls(a.transcript, _unit(a.confidence), tuple(Word.from_proto(w) for w in a.words))


@dataclass(frozen=True)
class Result:
    """A streaming (interim or final) or unary result; alternatives best first.

    `start`/`end` are the utterance's offsets in seconds from the start of the
    audio; `model` is the serving model's "name@version".
    """

    is_final: bool
    stability: float = 0.0
    alternatives: tuple[Alternative, ...] = ()
    start: float = 0.0
    end: float = 0.0
    model: str = ""

    @property
    def transcript(self) -> str:
        return self.alternatives[0].transcript if self.alternatives else ""

    @property
    def confidence(self) -> float:
        return self.alternatives[0].confidence if self.alternatives else 0.0

    @property
    def words(self) -> tuple[Word, ...]:
        return self.alternatives[0].words if self.alternatives else ()

    def to_json(self, file: str | None = None) -> dict[str, Any]:
        """The CLI's JSON line: file, is_final, transcript, confidence, stability, words[{word, start, end}]."""
        return {
            "file": file,
            "is_final": self.is_final,
            "transcript": self.transcript,
            "confidence": self.confidence,
            "stability": self.stability,
            "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
        }

    @classmethod
    def from_streaming(cls, r: recognizer_pb2.StreamingRecognitionResult, model: str = "") -> Result:
        return cls(
            is_final=r.is_final,
            stability=_unit(r.stability),
            alternatives=tuple(Alternative.from_proto(a) for a in r.alternatives),
            start=seconds(r.result_start_offset),
            end=seconds(r.result_end_offset),
            model=model,
        )

    @classmethod
    def from_unary(cls, r: recognizer_pb2.SpeechRecognitionResult, model: str = "") -> Result:
        return cls(
            is_final=True,
            alternatives=tuple(Alternative.from_proto(a) for a in r.alternatives),
            start=seconds(r.result_start_offset),
            end=seconds(r.result_end_offset),
            model=model,
        )


@dataclass(frozen=True)
class ModelInfo:
    """A servable model version, as the Models service describes it."""

    name: str
    version: int
    architecture: str = ""
    sample_rate_hertz: int = 0
    language_code: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)  # base_model, job_id, strategy, training_data
    create_time: str = ""  # ISO 8601 UTC, empty when unknown
    num_parameters: int = 0
    source: str = ""  # "store" or "builtin"
    is_default: bool = False
    description: str = ""

    @property
    def ref(self) -> str:
        """"name@version", the form every RPC accepts."""
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        """All fields plus "ref", JSON-ready."""
        return {"ref": self.ref, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @classmethod
    def from_proto(cls, m: models_pb2.Model) -> ModelInfo:
        lin = m.lineage
        created = ""
        if m.HasField("create_time") and (m.create_time.seconds or m.create_time.nanos):
            created = m.create_time.ToJsonString()
        return cls(
            name=m.name,
            version=m.version,
            architecture=m.architecture,
            sample_rate_hertz=m.sample_rate_hertz,
            language_code=m.language_code,
            metrics=dict(sorted(m.metrics.items())),
            lineage={"base_model": lin.base_model, "job_id": lin.job_id,
                     "strategy": lin.strategy, "training_data": lin.training_data},
            create_time=created,
            num_parameters=m.num_parameters,
            source=m.source,
            is_default=m.is_default,
            description=m.description,
        )


@dataclass(frozen=True)
class StreamConfig:
    """What to recognise and how; checked on construction, sent with `to_proto()`.

    `sample_rate_hertz` and `audio_channel_count` describe the audio as sent
    (the server resamples and downmixes). `phrases` with `boost` bias
    recognition; 0 boost means the server default. `endpointing=False` gives
    one final result at the end of the stream; `stop_history_ms` and
    `max_utterance_ms` of 0 mean the server defaults.
    """

    sample_rate_hertz: int
    audio_channel_count: int = 1
    encoding: str = "LINEAR16"
    model: str = ""
    language_code: str = ""
    max_alternatives: int = 1
    word_time_offsets: bool = True
    interim_results: bool = False
    single_utterance: bool = False
    phrases: tuple[str, ...] = ()
    boost: float = 0.0
    endpointing: bool = True
    stop_history_ms: int = 0
    max_utterance_ms: int = 0

    def __post_init__(self):
        if isinstance(self.phrases, str):
            raise TypeError("phrases must be a list of strings, not one string")
        object.__setattr__(self, "phrases", tuple(self.phrases))
        object.__setattr__(self, "encoding", str(self.encoding).upper())
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {self.encoding!r}")
        rate_ok = MIN_RATE <= self.sample_rate_hertz <= MAX_RATE
        if not rate_ok and not (self.sample_rate_hertz == 0 and self.encoding != "LINEAR16"):
            raise ValueError(f"sample_rate_hertz must be {MIN_RATE}..{MAX_RATE} (0 = from the header, WAV/FLAC only), "
                             f"not {self.sample_rate_hertz}; resample the audio first")
        if not 0 <= self.audio_channel_count <= MAX_CHANNELS:
            raise ValueError(f"audio_channel_count must be 0..{MAX_CHANNELS}, not {self.audio_channel_count}")
        if not 0 <= self.max_alternatives <= MAX_ALTERNATIVES:
            raise ValueError(f"max_alternatives must be 0..{MAX_ALTERNATIVES}, not {self.max_alternatives}")
        if any(not isinstance(p, str) or not p.strip() for p in self.phrases):
            raise ValueError("phrases must be non-empty strings")
        if not math.isfinite(self.boost):
            raise ValueError(f"boost must be a finite number, not {self.boost}")
        if self.boost and not self.phrases:
            raise ValueError("boost is set but there are no phrases to boost")
        if self.stop_history_ms and not 100 <= self.stop_history_ms <= 10000:
            raise ValueError(f"stop_history_ms must be 0 (server default) or 100..10000, not {self.stop_history_ms}")
        if self.max_utterance_ms and not 1000 <= self.max_utterance_ms <= 300000:
            raise ValueError(f"max_utterance_ms must be 0 (server default) or 1000..300000, not {self.max_utterance_ms}")

    def recognition_config(self) -> recognizer_pb2.RecognitionConfig:
        """The RecognitionConfig part (also what Recognize sends)."""
        cfg = recognizer_pb2.RecognitionConfig(
            encoding=recognizer_pb2.AudioEncoding.Value(self.encoding),
            sample_rate_hertz=self.sample_rate_hertz,
            audio_channel_count=self.audio_channel_count,
            model=self.model,
            language_code=self.language_code,
            max_alternatives=self.max_alternatives,
            enable_word_time_offsets=self.word_time_offsets,
        )
        if self.phrases:
            cfg.speech_contexts.add(phrases=self.phrases, boost=self.boost)
        if not self.endpointing or self.stop_history_ms or self.max_utterance_ms:
            cfg.endpointing.CopyFrom(recognizer_pb2.EndpointingConfig(
                disabled=not self.endpointing,
                stop_history_ms=self.stop_history_ms,
                max_utterance_ms=self.max_utterance_ms,
            ))
        return cfg

    def to_proto(self) -> recognizer_pb2.StreamingRecognitionConfig:
        """The StreamingRecognitionConfig the first StreamingRecognizeRequest carries."""
        return recognizer_pb2.StreamingRecognitionConfig(
            config=self.recognition_config(),
            interim_results=self.interim_results,
            single_utterance=self.single_utterance,
        )


__all__ = ["Alternative", "ModelInfo", "Result", "SpeechAdaptError", "StreamConfig", "Word", "seconds"]
