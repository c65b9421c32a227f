"""SQLite as the server keeps its state (jobs, upload accounting): one connection shared by threads (callers hold
their own lock), autocommit, WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: str | Path, schema: str) -> sqlite3.Connection:
    """The database at `path` (created with its folders as needed), with `schema` applied."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    db.executescript(schema)
    return db
