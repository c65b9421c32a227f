"""The job store: adaptation jobs and their events in SQLite (`STATE_DIR/jobs.sqlite`, WAL mode).

Every change is committed before the call returns, so a server restart loses nothing: the next server reads
the same records and re-attaches the jobs that had not ended. One `JobStore` per process; its methods are
thread-safe and quick (they are called from the event loop).

    store = JobStore(state_dir / "jobs.sqlite")
    job = store.create(spec_dict, run_dir)                 # state QUEUED, a "queued" event
    store.update(job.id, state=RUNNING, start_time=time.time())
    seq = store.add_event(job.id, {"phase": "train", "step": 10, ...})
    store.events(job.id, after=0)                          # [(seq, event dict)], oldest first
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from speechadapt.server.db import open_db

# Job states: the names of speechadapt.v1.JobState.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    progress TEXT NOT NULL DEFAULT '{}',
    ray_job_id TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 0,
    run_dir TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    from_job INTEGER NOT NULL DEFAULT 0,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
"""


class JobNotFound(LookupError):
    """No job has this id."""


@dataclass
class JobRecord:
    id: str
    spec: dict  # JobSpec.to_dict() as submitted (manifests as the client gave them)
    state: str
    run_dir: str
    create_time: float
    promoted: bool = False
    reason: str = ""
    model: str = ""
    version: int = 0
    metrics: dict = field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    progress: dict = field(default_factory=dict)  # the latest event
    ray_job_id: str = ""  # submission id of the latest attempt
    attempt: int = 0  # 0 until first submitted
    seq: int = 0  # creation order
    owner: str = ""  # the name of the token that submitted it ("" on a server without --auth-tokens)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


_JSON_FIELDS = {"spec", "metrics", "progress"}
_COLUMNS = [f.name for f in fields(JobRecord)]


class JobStore:
    """SQLite-backed job records and event log. Opening creates the file and folders as needed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_db(self.path, _SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:  # a database from before job owners: its jobs have none (admin sees them)
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs

    def create(self, spec: dict, run_dir: str | Path, job_id: str | None = None, owner: str = "") -> JobRecord:
        """A new QUEUED job (with its first event) of `owner`; its id is `job-<12 hex digits>` unless given."""
        job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, spec, state, create_time, run_dir, owner) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, json.dumps(spec), QUEUED, now, str(run_dir), owner),
                )
                self._insert_event(job_id, 0, False, {"state": QUEUED, "phase": "queued", "message": "job queued", "time": now})
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolled back itself on some errors (e.g. a full disk)
                    self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _record(row)

    def list(self, states: list[str] | None = None, limit: int = 50, before_seq: int | None = None,
             owner: str | None = None) -> list[JobRecord]:
        """Newest first; only `states` when given; only jobs created before the one with `before_seq` (paging);
        only the jobs of `owner` when given."""
        sql, args = f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE 1=1", []
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += list(states)
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state named, 0 included)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {**dict.fromkeys(STATES, 0), **dict(rows)}

    def unfinished(self) -> list[JobRecord]:
        """Jobs not in a terminal state, oldest first (re-attached on server start)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN (?, ?) ORDER BY seq", (QUEUED, RUNNING)
            ).fetchall()
        return [_record(r) for r in rows]

    def update(self, job_id: str, **values) -> JobRecord:
        """Set fields of a job (names of JobRecord fields); returns the updated record."""
        bad = set(values) - (set(_COLUMNS) - {"id", "seq", "owner"})
        if bad:
            raise ValueError(f"cannot update job fields {sorted(bad)}")
        if values:
            cols = ", ".join(f"{k} = ?" for k in values)
            args = [json.dumps(v) if k in _JSON_FIELDS else (int(v) if isinstance(v, bool) else v) for k, v in values.items()]
            with self._lock:
                cur = self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*args, job_id))
            if cur.rowcount == 0:
                raise JobNotFound(job_id)
        return self.get(job_id)

    # -- events

    def add_event(self, job_id: str, event: dict, attempt: int = 0, from_job: bool = False) -> int:
        """Append an event (and make it the job's progress); returns its sequence number.
        `from_job` marks events parsed from the Ray job's output of `attempt` (counted when logs are replayed)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._insert_event(job_id, attempt, from_job, event)
                self._db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(event), job_id))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolled back itself on some errors (e.g. a full disk)
                    self._db.execute("ROLLBACK")
                raise
        return seq

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after)
            ).fetchall()
        return [(seq, json.loads(ev)) for seq, ev in rows]

    def job_event_count(self, job_id: str, attempt: int) -> int:
        """How many events of `attempt` came from the Ray job's output (to skip them when its logs are replayed)."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM events WHERE job_id = ? AND attempt = ? AND from_job = 1", (job_id, attempt)
            ).fetchone()
        return n

    def _insert_event(self, job_id: str, attempt: int, from_job: bool, event: dict) -> int:
        cur = self._db.execute(
            "INSERT INTO events (job_id, attempt, from_job, event) VALUES (?, ?, ?, ?)",
            (job_id, attempt, int(from_job), json.dumps(event)),
        )
        return int(cur.lastrowid)


def _record(row) -> JobRecord:
    d = dict(zip(_COLUMNS, row))
    for k in _JSON_FIELDS:
        d[k] = json.loads(d[k]) if d[k] else {}
    d["promoted"] = bool(d["promoted"])
    return JobRecord(**d)
