"""Server configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port (the bound one is logged and returned)
    model_store: Path = Path("models")
    default_model: str | None = None  # None: "base-en" when shipped, else the store's only model
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_streams: int = 64  # concurrent recognitions; more get RESOURCE_EXHAUSTED
    max_message_bytes: int = 8 * 1024 * 1024
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = one per core
    workers: int = 0  # inference threads off the event loop; 0 = one per core

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be at least 64 KiB")

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1
