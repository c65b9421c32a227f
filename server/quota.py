"""Upload accounting: which owner stored which blobs, for `serve --upload-quota-gb` (`STATE_DIR/data/uploads.sqlite`).

A content-addressed blob counts, at its full declared size, against every owner who sent bytes of it (charged
when its first chunk from that owner arrives, before anything is written); a blob someone else already stored
completely costs nothing. The owner is the caller's token name; an open server has one owner, "". Rows are
committed before the call returns (SQLite, WAL), so the usage survives restarts. A partial blob that is
discarded (a refused upload, a sha256 mismatch) is released from every owner it was charged to.
"""

from __future__ import annotations

import threading
from pathlib import Path

from speechadapt.server.db import open_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    owner TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (owner, sha256)
);
CREATE INDEX IF NOT EXISTS charges_sha ON charges (sha256);
"""


class QuotaExceeded(Exception):
    def __init__(self, owner: str, used: int, size: int, quota: int):
        super().__init__(f"{owner or 'anonymous'}: {used} + {size} bytes > {quota}")
        self.owner, self.used, self.size, self.quota = owner, used, size, quota


class UploadLedger:
    """Per-owner blob charges in SQLite; thread-safe (the data store calls it from worker threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_db(self.path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def usage(self, owner: str) -> int:
        """Bytes of the blobs charged to `owner`."""
        with self._lock:
            return self._usage(owner)

    def _usage(self, owner: str) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM charges WHERE owner = ?", (owner,)).fetchone()[0])

    def charge(self, owner: str, sha: str, size: int, quota: int | None) -> bool:
        """Count blob `sha` of `size` bytes against `owner` (once). QuotaExceeded, recording nothing, when that would
        take the owner past `quota` bytes (None: no limit). True when newly charged."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM charges WHERE owner = ? AND sha256 = ?", (owner, sha)).fetchone():
                return False
            if quota is not None:
                used = self._usage(owner)
                if used + size > quota:
                    raise QuotaExceeded(owner, used, size, quota)
            self._db.execute("INSERT INTO charges (owner, sha256, bytes) VALUES (?, ?, ?)", (owner, sha, size))
            return True

    def release(self, sha: str) -> None:
        """The blob's bytes are gone: it no longer counts against anyone."""
        with self._lock:
            self._db.execute("DELETE FROM charges WHERE sha256 = ?", (sha,))
