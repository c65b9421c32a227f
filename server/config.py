"""Server configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from speechadapt.asr.data_access import real_roots

MIB = 1024 * 1024
LOG_FORMATS = ("text", "json")
GIB = 1024 * MIB


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port (the bound one is logged and returned)
    model_store: Path = Path("models")
    default_model: str | None = None  # what requests without config.model get; None: whisper-tiny-en, else base-en
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # mTLS: a CA certificate (PEM); clients must present a certificate it signed (needs tls_cert/tls_key).
    tls_client_ca: Path | None = None
    # Bearer tokens and roles (server/auth.py): one "TOKEN ROLE[,ROLE] [NAME]" per line; None: an open server.
    auth_tokens: Path | None = None
    max_streams: int = 64  # concurrent recognitions; more get RESOURCE_EXHAUSTED
    # A stream whose client takes no response for this long (a slow reader: its flow-control window is full)
    # is ended with RESOURCE_EXHAUSTED, freeing its slot.
    write_timeout_s: float = 30.0
    max_message_bytes: int = 8 * MIB
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = one per core
    workers: int = 0  # threads for work off the event loop (final beam searches, audio decoding); 0 = one per core
    batch_max: int = 32  # streams whose chunks share one encoder forward pass (1 = no batching)
    batch_wait_ms: float = 10.0  # longest a chunk waits for others to join its batch
    # Loaded models are kept in an LRU up to this many MiB of weights; idle ones beyond it are unloaded.
    model_memory_mb: int = 1024
    # Adaptation jobs: the job database, uploaded data and job run folders live here.
    # None: the sibling folder "<model_store>-state" (e.g. ./models -> ./models-state), see `state_path`.
    state_dir: Path | None = None
    # Ray cluster for adaptation jobs ("http://HEAD:8265", or "auto" / "ray://..."); None: the server starts and
    # owns a local Ray head on 127.0.0.1 when the first job needs it, and stops it when the server stops.
    ray_address: str | None = None
    ray_num_cpus: int = 0  # CPUs the owned local Ray head offers; 0 = all cores
    max_blob_bytes: int = 2048 * MIB  # largest single uploaded audio file
    max_upload_bytes: int = 2048 * MIB  # most blob bytes received by one UploadData call
    # Prometheus text on http://METRICS_HOST:METRICS_PORT/metrics (server/metrics.py); None: not served,
    # 0: a free port (the bound one is logged and in SpeechServer.metrics_port).
    metrics_port: int | None = None
    metrics_host: str | None = None  # None: the gRPC `host`
    log_format: str = "text"  # "text" or "json" (one object per line; adds a line per RPC, server/logs.py)
    # What jobs may read besides uploads (data://): files under these folders (`..` and symlinks followed).
    # Empty: uploads only. Stored canonical (os.path.realpath).
    data_roots: tuple[Path, ...] = ()
    upload_quota_bytes: int | None = None  # blob bytes one owner (token name) may store; None: no limit
    min_free_disk_bytes: int = GIB  # uploads must leave this much free space on the state dir's disk
    # SIGTERM: refuse new recognitions, let open ones run up to this many seconds, then stop (server/drain.py)
    drain_seconds: float = 30.0

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (client certificates) needs the server's own tls_cert and tls_key")
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if not 0 < self.write_timeout_s <= 3600:
            raise ValueError("write_timeout_s must be more than 0 and at most 3600 seconds")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be at least 64 KiB")
        if self.model_memory_mb < 1:
            raise ValueError("model_memory_mb must be at least 1")
        if self.max_blob_bytes < 1 or self.max_upload_bytes < 1:
            raise ValueError("max_blob_bytes and max_upload_bytes must be at least 1")
        if self.batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if not 0 <= self.batch_wait_ms <= 100:
            raise ValueError("batch_wait_ms must be 0..100")
        if self.metrics_port is not None:
            if not 0 <= self.metrics_port <= 65535:
                raise ValueError(f"metrics_port must be 0..65535 (0 = a free port), not {self.metrics_port}")
            if self.metrics_port and self.metrics_port == self.port and self.metrics_bind == self.host:
                raise ValueError(f"metrics_port {self.metrics_port} is the gRPC port: give the metrics another port")
        elif self.metrics_host is not None:
            raise ValueError("metrics_host needs metrics_port (--metrics-port N)")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if not 0 <= self.drain_seconds <= 3600:
            raise ValueError(f"drain_seconds must be 0..3600 (seconds open streams may run on after SIGTERM), "
                             f"not {self.drain_seconds}")
        if self.ray_num_cpus < 0:
            raise ValueError("ray_num_cpus must not be negative (0 = all cores)")
        if isinstance(self.data_roots, (str, Path)):
            raise ValueError("data_roots is a tuple of folders, not one path")
        if any(not str(r).strip() for r in self.data_roots):
            raise ValueError("a data root must name a folder (an empty path was given)")
        object.__setattr__(self, "data_roots", tuple(Path(r) for r in real_roots(self.data_roots)))
        if self.upload_quota_bytes is not None and self.upload_quota_bytes < 0:
            raise ValueError("upload_quota_bytes must not be negative (None = no quota)")
        if self.min_free_disk_bytes < 0:
            raise ValueError("min_free_disk_bytes must not be negative (0 = no floor)")

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    @property
    def metrics_bind(self) -> str:
        """The address the metrics endpoint binds: `metrics_host`, else the gRPC `host`."""
        return self.metrics_host or self.host

    @property
    def state_path(self) -> Path:
        """Where jobs, uploads and run folders live: `state_dir`, else `<model_store>-state` beside the store
        (beside, not inside: the store may be mounted read-only for serving replicas)."""
        if self.state_dir is not None:
            return Path(self.state_dir).absolute()
        store = Path(self.model_store).absolute()
        return store.parent / f"{store.name}-state"
