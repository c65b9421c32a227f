"""Server configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


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
        if self.ray_num_cpus < 0:
            raise ValueError("ray_num_cpus must not be negative (0 = all cores)")

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    @property
    def state_path(self) -> Path:
        """Where jobs, uploads and run folders live: `state_dir`, else `<model_store>-state` beside the store
        (beside, not inside: the store may be mounted read-only for serving replicas)."""
        if self.state_dir is not None:
            return Path(self.state_dir).absolute()
        store = Path(self.model_store).absolute()
        return store.parent / f"{store.name}-state"
