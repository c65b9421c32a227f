import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    HEAD: _ClassVar[Strategy]
    FINETUNE: _ClassVar[Strategy]
    ADAPTERS: _ClassVar[Strategy]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
STRATEGY_UNSPECIFIED: Strategy
HEAD: Strategy
FINETUNE: Strategy
ADAPTERS: Strategy
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class JobSpec(_message.Message):
    __slots__ = ("name", "base_model", "train_manifest", "dev_manifest", "source_dev_manifest", "strategy", "source_replay", "max_epochs", "max_minutes", "learning_rate", "batch_size", "augment", "workers", "gpus_per_worker", "seed", "max_source_regression", "search", "domain_text", "domain_text_sha256", "domain_text_lines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DEV_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEV_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REPLAY_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_MINUTES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCE_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_TEXT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_TEXT_LINES_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_model: str
    train_manifest: str
    dev_manifest: str
    source_dev_manifest: str
    strategy: Strategy
    source_replay: float
    max_epochs: int
    max_minutes: float
    learning_rate: float
    batch_size: int
    augment: bool
    workers: int
    gpus_per_worker: float
    seed: int
    max_source_regression: float
    search: SearchSpec
    domain_text: str
    domain_text_sha256: str
    domain_text_lines: int
    def __init__(self, name: _Optional[str] = ..., base_model: _Optional[str] = ..., train_manifest: _Optional[str] = ..., dev_manifest: _Optional[str] = ..., source_dev_manifest: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., source_replay: _Optional[float] = ..., max_epochs: _Optional[int] = ..., max_minutes: _Optional[float] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., augment: _Optional[bool] = ..., workers: _Optional[int] = ..., gpus_per_worker: _Optional[float] = ..., seed: _Optional[int] = ..., max_source_regression: _Optional[float] = ..., search: _Optional[_Union[SearchSpec, _Mapping]] = ..., domain_text: _Optional[str] = ..., domain_text_sha256: _Optional[str] = ..., domain_text_lines: _Optional[int] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("trials", "budget_minutes", "strategies", "learning_rates", "source_replay", "concurrent")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MINUTES_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REPLAY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    trials: int
    budget_minutes: float
    strategies: _containers.RepeatedScalarFieldContainer[Strategy]
    learning_rates: _containers.RepeatedScalarFieldContainer[float]
    source_replay: _containers.RepeatedScalarFieldContainer[float]
    concurrent: int
    def __init__(self, trials: _Optional[int] = ..., budget_minutes: _Optional[float] = ..., strategies: _Optional[_Iterable[_Union[Strategy, str]]] = ..., learning_rates: _Optional[_Iterable[float]] = ..., source_replay: _Optional[_Iterable[float]] = ..., concurrent: _Optional[int] = ...) -> None: ...

class JobMetrics(_message.Message):
    __slots__ = ("base_target_wer", "adapted_target_wer", "base_source_wer", "adapted_source_wer", "relatedness", "trained_parameters", "total_parameters", "base_target_wer_domain_lm", "domain_lm_weight", "domain_lm_dev_perplexity")
    BASE_TARGET_WER_FIELD_NUMBER: _ClassVar[int]
    ADAPTED_TARGET_WER_FIELD_NUMBER: _ClassVar[int]
    BASE_SOURCE_WER_FIELD_NUMBER: _ClassVar[int]
    ADAPTED_SOURCE_WER_FIELD_NUMBER: _ClassVar[int]
    RELATEDNESS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BASE_TARGET_WER_DOMAIN_LM_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_LM_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_LM_DEV_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    base_target_wer: float
    adapted_target_wer: float
    base_source_wer: float
    adapted_source_wer: float
    relatedness: float
    trained_parameters: int
    total_parameters: int
    base_target_wer_domain_lm: float
    domain_lm_weight: float
    domain_lm_dev_perplexity: float
    def __init__(self, base_target_wer: _Optional[float] = ..., adapted_target_wer: _Optional[float] = ..., base_source_wer: _Optional[float] = ..., adapted_source_wer: _Optional[float] = ..., relatedness: _Optional[float] = ..., trained_parameters: _Optional[int] = ..., total_parameters: _Optional[int] = ..., base_target_wer_domain_lm: _Optional[float] = ..., domain_lm_weight: _Optional[float] = ..., domain_lm_dev_perplexity: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "spec", "state", "promoted", "reason", "model", "version", "metrics", "create_time", "start_time", "end_time", "progress", "ray_job_id", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RAY_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    state: JobState
    promoted: bool
    reason: str
    model: str
    version: int
    metrics: JobMetrics
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    progress: JobEvent
    ray_job_id: str
    owner: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., promoted: _Optional[bool] = ..., reason: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., metrics: _Optional[_Union[JobMetrics, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[JobEvent, _Mapping]] = ..., ray_job_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "metrics_json", "plot_png", "search_png")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    PLOT_PNG_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PNG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    metrics_json: bytes
    plot_png: bytes
    search_png: bytes
    def __init__(self, job_id: _Optional[str] = ..., metrics_json: _Optional[bytes] = ..., plot_png: _Optional[bytes] = ..., search_png: _Optional[bytes] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "phase", "step", "total_steps", "loss", "dev_wer", "eta", "time", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DEV_WER_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    phase: str
    step: int
    total_steps: int
    loss: float
    dev_wer: float
    eta: _duration_pb2.Duration
    time: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., dev_wer: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("sha256", "total_size", "offset", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_size: int
    offset: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ManifestUpload(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class UploadDataRequest(_message.Message):
    __slots__ = ("blob", "manifest")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    blob: BlobChunk
    manifest: ManifestUpload
    def __init__(self, blob: _Optional[_Union[BlobChunk, _Mapping]] = ..., manifest: _Optional[_Union[ManifestUpload, _Mapping]] = ...) -> None: ...

class UploadDataResponse(_message.Message):
    __slots__ = ("manifest_uri", "utterances", "audio_seconds", "bytes_received")
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    manifest_uri: str
    utterances: int
    audio_seconds: float
    bytes_received: int
    def __init__(self, manifest_uri: _Optional[str] = ..., utterances: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class CheckUploadRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobStatus(_message.Message):
    __slots__ = ("sha256", "bytes_present", "complete")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_PRESENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    bytes_present: int
    complete: bool
    def __init__(self, sha256: _Optional[str] = ..., bytes_present: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class CheckUploadResponse(_message.Message):
    __slots__ = ("blobs",)
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobStatus]
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobStatus, _Mapping]]] = ...) -> None: ...
