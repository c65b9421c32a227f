"""Public value types of the client: configs in, results and model cards out.

Plain frozen dataclasses with converters from the speechadapt.v1 messages, so
callers never handle protobuf objects unless they want to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from speechadapt.jobspec import JobSpec, JobSpecError
from speechadapt.v1 import adaptation_pb2, models_pb2, recognizer_pb2

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
        """The CLI's JSON line: file, is_final, transcript, confidence, stability, words[{word, start, end}];
        with an n-best list also alternatives[{transcript, confidence}], best first."""
        line = {
            "file": file,
            "is_final": self.is_final,
            "transcript": self.transcript,
            "confidence": self.confidence,
            "stability": self.stability,
            "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
        }
        if len(self.alternatives) > 1:
            line["alternatives"] = [{"transcript": a.transcript, "confidence": a.confidence} for a in self.alternatives]
        return line

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
    adapter_base: str = ""  # "name@version" an adapter package applies to; "" for a complete package
    package_bytes: int = 0  # this version's own files on disk

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
            adapter_base=m.adapter_base,
            package_bytes=m.package_bytes,
        )


@dataclass(frozen=True)
class StreamConfig:
    """What to recognise and how; checked on construction, sent with `to_proto()`.

    `sample_rate_hertz` and `audio_channel_count` describe the audio as sent
    (the server resamples and downmixes). `phrases` with `boost` bias
    recognition; 0 boost means the server default. `endpointing=False` gives
    one final result at the end of the stream; `stop_history_ms` and
    `max_utterance_ms` of 0 mean the server defaults; `vad_aggressiveness`
    sets the voice activity detector that must agree before an utterance ends.
    `max_alternatives` > 1 gives n-best lists on final results.
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
    vad_aggressiveness: int = 0  # webrtcvad 1..3 must agree with the decoder; 0 = server default, -1 = off

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
        if not -1 <= self.vad_aggressiveness <= 3:
            raise ValueError(f"vad_aggressiveness must be -1 (off), 0 (server default) or 1..3, not {self.vad_aggressiveness}")

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
        if not self.endpointing or self.stop_history_ms or self.max_utterance_ms or self.vad_aggressiveness:
            cfg.endpointing.CopyFrom(recognizer_pb2.EndpointingConfig(
                disabled=not self.endpointing,
                stop_history_ms=self.stop_history_ms,
                max_utterance_ms=self.max_utterance_ms,
                vad_aggressiveness=self.vad_aggressiveness,
            ))
        return cfg

    def to_proto(self) -> recognizer_pb2.StreamingRecognitionConfig:
        """The StreamingRecognitionConfig the first StreamingRecognizeRequest carries."""
        return recognizer_pb2.StreamingRecognitionConfig(
            config=self.recognition_config(),
            interim_results=self.interim_results,
            single_utterance=self.single_utterance,
        )


# -- adaptation jobs

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def state_name(value: int) -> str:
    """A JobState number as its name ("RUNNING"); "UNSPECIFIED" for 0, "STATE_<n>" for one this client does not know."""
    if value == adaptation_pb2.JOB_STATE_UNSPECIFIED:
        return "UNSPECIFIED"
    try:
        return adaptation_pb2.JobState.Name(value)
    except ValueError:
        return f"STATE_{value}"


def _time(msg: Any, name: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset or zero."""
    if not msg.HasField(name):
        return None
    ts: Timestamp = getattr(msg, name)
    if not (ts.seconds or ts.nanos):
        return None
    return ts.ToDatetime(tzinfo=timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def _measured(x: float) -> float | None:
    """A score the contract marks "negative when not measured" (WER, relatedness): None then."""
    x = float(x)
    return x if math.isfinite(x) and x >= 0 else None


@dataclass(frozen=True)
class JobMetrics:
    """Before/after numbers of an adaptation job. WERs are fractions (0.112 = 11.2 %); None = not measured (yet).

    `relatedness` is base source WER / base target WER (near 1: the target is no harder than the source
    domain, near 0: far apart).
    """

    base_target_wer: float | None = None
    adapted_target_wer: float | None = None
    base_source_wer: float | None = None
    adapted_source_wer: float | None = None
    relatedness: float | None = None
    trained_parameters: int = 0
    total_parameters: int = 0
    base_target_wer_domain_lm: float | None = None  # jobs with domain_text: the base decoded with the domain LM
    domain_lm_weight: float | None = None  # the domain text's weight in the mixed LM (1.0: no base LM to mix; 0: not used)
    domain_lm_dev_perplexity: float | None = None  # target dev transcripts under the candidate's LM

    WERS = ("base_target_wer", "adapted_target_wer", "base_source_wer", "adapted_source_wer")

    @classmethod
    def from_proto(cls, m: adaptation_pb2.JobMetrics) -> JobMetrics:
        return cls(
            base_target_wer=_measured(m.base_target_wer), adapted_target_wer=_measured(m.adapted_target_wer),
            base_source_wer=_measured(m.base_source_wer), adapted_source_wer=_measured(m.adapted_source_wer),
            relatedness=_measured(m.relatedness), trained_parameters=m.trained_parameters,
            total_parameters=m.total_parameters,
            base_target_wer_domain_lm=_measured(m.base_target_wer_domain_lm)
            if m.HasField("base_target_wer_domain_lm") else None,
            domain_lm_weight=m.domain_lm_weight if m.HasField("domain_lm_weight") else None,
            domain_lm_dev_perplexity=m.domain_lm_dev_perplexity if m.HasField("domain_lm_dev_perplexity") else None,
        )

    def wers(self) -> dict[str, float | None]:
        """The four WERs, as the CLI's job record carries them."""
        return {k: getattr(self, k) for k in self.WERS}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class JobEvent:
    """One progress event of a job: its state, the phase ("validate", "baseline", "train", "evaluate",
    "publish"), training step of total, loss, dev WER (None = not measured), `eta` in seconds (None =
    unknown: the wire's unset or zero duration), the event `time` (UTC) and a human message."""

    job_id: str
    state: str
    phase: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    dev_wer: float | None = None
    eta: float | None = None
    time: datetime | None = None
    message: str = ""

    @property
    def ended(self) -> bool:
        """The job is over (SUCCEEDED, FAILED or CANCELLED): the last event of a watch."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_proto(cls, e: adaptation_pb2.JobEvent) -> JobEvent:
        return cls(
            job_id=e.job_id, state=state_name(e.state), phase=e.phase, step=e.step, total_steps=e.total_steps,
            loss=float(e.loss), dev_wer=_measured(e.dev_wer),
            eta=seconds(e.eta) if e.HasField("eta") and seconds(e.eta) > 0 else None, time=_time(e, "time"),
            message=e.message,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, `time` as ISO 8601 UTC."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["time"] = _iso(self.time)
        return d


@dataclass(frozen=True)
class Job:
    """An adaptation job as the server records it.

    `promoted` says whether a new model version was published (then `model`@`version` names it);
    `reason` says why (not), or why the job failed. Times are aware UTC datetimes (None until they
    happen); `progress` is the latest event. `spec` is None only if the server sent one this client
    cannot read.
    """

    id: str
    state: str
    spec: JobSpec | None = None
    promoted: bool = False
    reason: str = ""
    model: str = ""
    version: int = 0
    metrics: JobMetrics = field(default_factory=JobMetrics)
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    progress: JobEvent | None = None
    ray_job_id: str = ""
    owner: str = ""  # the token name that submitted it (servers with --auth-tokens), else ""

    @property
    def ended(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """The job ran to the end (whether or not the adapted model was promoted)."""
        return self.state == "SUCCEEDED"

    @property
    def model_ref(self) -> str:
        """"name@version" of the published model, "" when nothing was published."""
        return f"{self.model}@{self.version}" if self.model and self.version else ""

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (None until the job has both)."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    @classmethod
    def from_proto(cls, j: adaptation_pb2.Job) -> Job:
        spec = None
        if j.HasField("spec"):
            try:
                spec = JobSpec.from_proto(j.spec)
            except JobSpecError:
                spec = None
        return cls(
            id=j.id, state=state_name(j.state), spec=spec, promoted=j.promoted, reason=j.reason,
            model=j.model, version=j.version,
            metrics=JobMetrics.from_proto(j.metrics) if j.HasField("metrics") else JobMetrics(),
            create_time=_time(j, "create_time"), start_time=_time(j, "start_time"), end_time=_time(j, "end_time"),
            progress=JobEvent.from_proto(j.progress) if j.HasField("progress") else None,
            ray_job_id=j.ray_job_id, owner=j.owner,
        )

    def record(self) -> dict[str, Any]:
        """The CLI's job record (`speechadapt jobs submit --json`): id, state, promoted, reason, model,
        version and metrics {base_target_wer, adapted_target_wer, base_source_wer, adapted_source_wer}."""
        return {"id": self.id, "state": self.state, "promoted": self.promoted, "reason": self.reason,
                "model": self.model, "version": self.version, "metrics": self.metrics.wers()}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: the record's keys (metrics with all their fields) plus spec, times
        (ISO 8601 UTC), progress, ray_job_id and owner."""
        d = self.record()
        d["metrics"] = self.metrics.to_dict()
        d.update(
            spec=self.spec.to_dict() if self.spec is not None else None,
            create_time=_iso(self.create_time), start_time=_iso(self.start_time), end_time=_iso(self.end_time),
            progress=self.progress.to_dict() if self.progress is not None else None,
            ray_job_id=self.ray_job_id, owner=self.owner,
        )
        return d


__all__ = ["Alternative", "JOB_STATES", "Job", "JobEvent", "JobMetrics", "ModelInfo", "Result", "SpeechAdaptError",
           "StreamConfig", "TERMINAL_STATES", "Word", "seconds", "state_name"]
