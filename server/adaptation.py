"""The Adaptation service: adaptation jobs on Ray, and the uploads they train on.

Two parts:

* `JobManager` runs jobs. SubmitJob makes a QUEUED record (server/jobs.py) and a task that submits

      python -m speechadapt.training.adapt --spec RUN_DIR/spec.json --store STORE --run-dir RUN_DIR --job-id ID

  to Ray (server/ray_backend.py) as submission `<job id>-<attempt>`, then follows it: its output lines holding
  `@@speechadapt-event {json}` become job events (stored, then pushed to WatchJob streams), its Ray status
  becomes the job state (PENDING -> QUEUED, RUNNING -> RUNNING, SUCCEEDED -> SUCCEEDED with the result event or
  RUN_DIR/result.json, FAILED -> FAILED with the error event's message, STOPPED -> CANCELLED).
  Run folders are STATE_DIR/runs/<job id>.

  Restart: on start, every job not in a terminal state is re-attached. A run folder holding result.json finishes
  the job from it (first storing the events of its output that no server saw, when the cluster still holds it);
  a submission the cluster still knows is followed (its output replayed, events already stored skipped);
  otherwise the same command is submitted again as attempt N+1 with the same run folder, and the job resumes
  from its last checkpoint. While a job is followed: when the owned local head dies, a new one is
  started and the job submitted again (it resumes from its last checkpoint); when an external cluster does not
  answer for CLUSTER_LOST_S, the job is FAILED with that reason.

* `AdaptationService` is the gRPC surface: it checks requests (every problem listed at once, in the status the
  contract gives) and turns records into messages. With --auth-tokens (server/auth.py) a job records the name
  of the token that submitted it (`owner`); an `adapt` caller sees, watches and cancels only its own jobs
  (another owner's job is NOT_FOUND, as if it did not exist), `admin` all of them. Uploads count against their
  owner's quota (server/quota.py).

  A job may read only uploads and files under the server's `--data-root` folders (asr/data_access.py): anything
  else is PERMISSION_DENIED before the job is recorded, and the job's validate phase checks again with the same
  roots and the upload store (`--data-root` on its command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import shlex
import sqlite3
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from speechadapt.asr.data_access import access_error, access_problems, real_roots
from speechadapt.asr.store import disk_full
from speechadapt.jobspec import DATA_URI, MAX_DOMAIN_TEXT_BYTES, TEXT_URI, JobSpec, JobSpecError
from speechadapt.quote import quote
from speechadapt.server.auth import CALLER, Caller
from speechadapt.server.datastore import DataStore, UploadError, check_sha
from speechadapt.server.jobs import (CANCELLED, FAILED, QUEUED, RUNNING, STATES, SUCCEEDED, TERMINAL, JobNotFound,
                                     JobRecord, JobStore)
from speechadapt.server.logs import fields
from speechadapt.server.metrics import Metrics
from speechadapt.server.ray_backend import RayBackend, RayJobInfo, RayUnavailable
from speechadapt.server.registry import ModelRegistry
from speechadapt.v1 import adaptation_pb2 as pb
from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

EVENT_MARKER = "@@speechadapt-event "
ENTRYPOINT_MODULE = "speechadapt.training.adapt"
MANIFEST_KEYS = ("train_manifest", "dev_manifest", "source_dev_manifest")
MAX_ATTEMPTS = 5  # submissions of one job (a resubmission follows a lost Ray job, e.g. after a head restart)
POLL_S = 1.0
CLUSTER_LOST_S = 300.0  # a Ray cluster that does not answer this long while a job runs: the job FAILED
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


def _clip(text: str, limit: int = 2000) -> str:
    """At most `limit` characters: the start and the end (where a traceback's last line is)."""
    if len(text) <= limit:
        return text
    return text[: limit // 4] + " [...] " + text[-(limit - limit // 4):]


def parse_event(line: str) -> dict | None:
    """The event a job output line carries (the marker may follow a Ray prefix), or None."""
    i = line.find(EVENT_MARKER)
    if i < 0:
        return None
    try:
        ev = json.loads(line[i + len(EVENT_MARKER):])
    except json.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None


class JobManager:
    """Runs adaptation jobs on a Ray backend and records them in a job store (see the module docstring)."""

    def __init__(self, store: JobStore, data: DataStore, backend: RayBackend, model_store: Path, runs_dir: Path,
                 data_roots: tuple[Path, ...] = ()):
        self.store, self.data, self.backend = store, data, backend
        self.model_store = Path(model_store).absolute()
        self.runs_dir = Path(runs_dir)
        self.data_roots = real_roots(data_roots)  # what jobs may read besides uploads (asr/data_access.py)
        self._tasks: dict[str, asyncio.Task] = {}
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._cancelling: set[str] = set()

    # -- lifecycle

    async def start(self) -> None:
        """Re-attach the jobs that had not ended (in the background)."""
        for job in self.store.unfinished():
            log.info("re-attaching job %s (%s, attempt %d)", job.id, job.state, job.attempt)
            self._spawn(job.id, resume=True)

    async def stop(self) -> None:
        """Stop following jobs (their records keep their state, for the next server), then the owned Ray head."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.backend.close()

    def _spawn(self, job_id: str, resume: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(job_id, resume), name=f"job {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda t: self._tasks.pop(job_id, None) if self._tasks.get(job_id) is t else None)

    # -- events

    def subscribe(self, job_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                self._subscribers.pop(job_id, None)

    def _event(self, job_id: str, event: dict, attempt: int = 0, from_job: bool = False) -> None:
        event.setdefault("time", time.time())
        if "state" not in event:
            event["state"] = self.store.get(job_id).state
        seq = self.store.add_event(job_id, event, attempt, from_job)
        for q in self._subscribers.get(job_id, ()):
            q.put_nowait((seq, event))

    @staticmethod
    def _transition(job_id: str, old: str | None, new: str, reason: str) -> None:
        """Log a job's change of state (`old` None: the job was just made)."""
        log.info("job %s %s -> %s: %s", job_id, old or "new", new, reason,
                 extra=fields("job", job_id=job_id, **{"from": old, "to": new, "reason": reason}))

    def _finish(self, job_id: str, state: str, reason: str, **values) -> JobRecord:
        """Put a job in a terminal state, with the event that says so."""
        old = self.store.get(job_id).state
        job = self.store.update(job_id, state=state, reason=reason, end_time=time.time(), **values)
        self._event(job_id, {"state": state, "phase": "done", "message": reason or state.lower()})
        self._transition(job_id, old, state, reason)
        return job

    # -- submission

    def submit(self, spec: JobSpec, owner: str = "") -> JobRecord:
        """Record a checked spec as a QUEUED job of `owner` and start running it."""
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        while (self.runs_dir / job_id).exists():  # never reuse a run folder (a clash is astronomically rare)
            job_id = f"job-{uuid.uuid4().hex[:12]}"
        job = self.store.create(spec.to_dict(), self.runs_dir / job_id, job_id=job_id, owner=owner)
        self._transition(job.id, None, job.state, f"submitted by {owner}" if owner else "submitted")
        self._spawn(job.id, resume=False)
        return job

    def resolve_spec(self, spec: JobSpec) -> JobSpec:
        """The spec with data:// manifests replaced by files on this machine (LookupError when unknown)."""
        values = {}
        for key in MANIFEST_KEYS:
            v = getattr(spec, key)
            if v.startswith(DATA_URI):
                values[key] = str(self.data.resolve(v))
        texts = []
        for v in spec.domain_text:
            path = self.data.text_path(v[len(TEXT_URI):]) if v.startswith(TEXT_URI) else None
            if v.startswith(TEXT_URI) and path is None:
                raise LookupError(f"domain_text {v}: not in this server's data store; send the text again")
            texts.append(str(path) if path else v)
        return dataclasses.replace(spec, **values, domain_text=texts)

    def _command(self, job: JobRecord) -> str:
        run = Path(job.run_dir)
        args = [self.backend.python, "-m", ENTRYPOINT_MODULE, "--spec", str(run / "spec.json"),
                "--store", str(self.model_store), "--run-dir", str(run), "--job-id", job.id]
        for root in (*self.data_roots, str(self.data.root.absolute())):  # the job checks its data against them too
            args += ["--data-root", root]
        return shlex.join(args)

    async def _drive(self, job_id: str, resume: bool) -> None:
        """Submit (or re-attach to) a job's Ray submission and follow it to the end."""
        try:
            job = self.store.get(job_id)
            result_file = Path(job.run_dir) / "result.json"
            if resume and result_file.is_file():
                await self._replay_unseen(job)
                self._finish_from_result(job_id, None)
                return
            await self.backend.start()
            follow = False
            if resume and job.ray_job_id:
                follow = await self.backend.info(job.ray_job_id) is not None
                if not follow:
                    self._event(job_id, {"phase": "resubmit", "message":
                                         f"the Ray cluster no longer knows {job.ray_job_id}: submitting it again "
                                         "(it resumes from its last checkpoint)"})
            while True:
                if job_id in self._cancelling:
                    return
                if not follow:
                    job = await self._submit_attempt(job_id)
                    if job is None:
                        return
                info = await self._follow(job_id)
                if info is not None:
                    self._conclude(job_id, info)
                    return
                # the cluster lost the submission while we followed it (e.g. the head was restarted, or died)
                follow = False
                self._event(job_id, {"phase": "resubmit", "message": self._lost_message()})
        except asyncio.CancelledError:
            raise  # the server is stopping: the record keeps its state for the next server
        except RayUnavailable as e:
            self._fail_unless_terminal(job_id, str(e))
        except Exception as e:  # never leave a job hanging in RUNNING without a follower
            log.exception("job %s failed in the server", job_id)
            self._fail_unless_terminal(job_id, f"the server could not run the job: {type(e).__name__}: {e}")

    async def _replay_unseen(self, job: JobRecord) -> None:
        """Store the events of a job that ended while no server followed it, from its output, when the cluster
        still holds it (a server-owned head that was stopped took that output with it)."""
        if not job.ray_job_id or not self.backend.reachable_without_starting():
            return
        try:
            await self.backend.start()
            self._reader(job.id, job.attempt)((await self.backend.logs(job.ray_job_id)).splitlines())
        except Exception as e:  # the result is what matters; the output is a nice-to-have
            log.info("job %s: its output is not available (%s): finishing it from its result alone", job.id, e)

    def _fail_unless_terminal(self, job_id: str, reason: str) -> None:
        with contextlib.suppress(JobNotFound):
            if not self.store.get(job_id).terminal:
                self._finish(job_id, FAILED, reason)

    async def _submit_attempt(self, job_id: str) -> JobRecord | None:
        job = self.store.get(job_id)
        if job.attempt >= MAX_ATTEMPTS:
            self._finish(job_id, FAILED, f"gave up after {job.attempt} attempts to run the job on Ray")
            return None
        run = Path(job.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        spec_file = run / "spec.json"
        if not spec_file.is_file():
            spec = self.resolve_spec(JobSpec.from_record(job.spec))
            tmp = spec_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(spec.to_dict(), indent=2))
            tmp.replace(spec_file)
        await self.backend.ensure_running()
        attempt = job.attempt + 1
        sid = f"{job_id}-{attempt}"
        job = self.store.update(job_id, attempt=attempt, ray_job_id=sid)  # before submitting: a crash then resubmits
        command = self._command(job)
        await self.backend.submit(sid, command, {"PYTHONUNBUFFERED": "1"})
        self._event(job_id, {"phase": "submitted", "message": f"submitted to Ray as {sid} (attempt {attempt})"}, attempt)
        if job_id in self._cancelling:  # cancelled while the submission was on its way
            await self.backend.stop_job(sid)
        return job

    def _lost_message(self) -> str:
        if self.backend.head_lost():
            return ("the local Ray head died under the job (a crash or a kill): starting a new head and submitting "
                    "the job again; it resumes from its last checkpoint")
        return "the Ray cluster lost the job (e.g. its head restarted): submitting it again; it resumes from its last checkpoint"

    async def _follow(self, job_id: str) -> RayJobInfo | None:
        """Follow the latest attempt until Ray reports it ended (its final info), or None if Ray lost it (the
        cluster does not know it any more, or the owned local head died). A cluster that does not answer for
        CLUSTER_LOST_S fails the job (RayUnavailable)."""
        job = self.store.get(job_id)
        sid, attempt = job.ray_job_id, job.attempt
        tail = asyncio.get_running_loop().create_task(self._tail(job_id, sid, attempt))
        info: RayJobInfo | None = None
        last_stop = 0.0
        silent_since: float | None = None
        try:
            while True:
                try:
                    info = await self.backend.info(sid)
                except OSError as e:  # the dashboard does not answer (requests' ConnectionError is an OSError)
                    if self.backend.head_lost():
                        info = None
                        break
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since > CLUSTER_LOST_S:
                        raise RayUnavailable(f"the Ray cluster has not answered for {CLUSTER_LOST_S:.0f} s ({e}); the "
                                             f"job stops here, its checkpoints stay in {job.run_dir}") from e
                    await asyncio.sleep(POLL_S)
                    continue
                silent_since = None
                if info is None or info.terminal:
                    break
                if info.status == "RUNNING" and self.store.get(job_id).state == QUEUED:
                    self._set_running(job_id, attempt)
                if job_id in self._cancelling and time.monotonic() - last_stop > 5:
                    last_stop = time.monotonic()
                    await self.backend.stop_job(sid)
                await asyncio.sleep(POLL_S)
            if info is not None:  # let the tail catch up with the last lines
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(tail), 5.0)
        finally:
            tail.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tail
        if info is not None:
            with contextlib.suppress(Exception):  # the whole log once more: events the tail missed
                self._reader(job_id, attempt)((await self.backend.logs(sid)).splitlines())
        return info

    async def _tail(self, job_id: str, sid: str, attempt: int) -> None:
        """Turn the job's output into events as it is written; ends with the output (re-tails if the stream drops)."""
        while True:
            reader = self._reader(job_id, attempt)
            buf = ""
            try:
                async for chunk in self.backend.tail(sid):
                    buf += chunk
                    *complete, buf = buf.split("\n")
                    reader(complete)
                reader([buf])
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("log tail of %s dropped (%s); tailing again", sid, e)
            await asyncio.sleep(POLL_S)

    def _reader(self, job_id: str, attempt: int):
        """A function taking successive output lines of `attempt` (from its start) that stores the events among
        them not stored yet: events are counted, and the first `job_event_count` were stored by an earlier pass."""
        stored = self.store.job_event_count(job_id, attempt)
        seen = 0

        def feed(lines: list[str]) -> None:
            nonlocal seen, stored
            for line in lines:
                ev = parse_event(line)
                if ev is None:
                    continue
                seen += 1
                if seen <= stored:
                    continue
                if self.store.get(job_id).state == QUEUED:
                    self._set_running(job_id, attempt)
                ev = {k: ev[k] for k in ("phase", "step", "total_steps", "loss", "dev_wer", "eta_s", "message", "time",
                                         "result", "problems") if k in ev}
                self._event(job_id, ev, attempt, from_job=True)
                stored += 1

        return feed

    def _set_running(self, job_id: str, attempt: int) -> None:
        job = self.store.get(job_id)
        self.store.update(job_id, state=RUNNING, start_time=job.start_time or time.time())
        message = f"running on Ray (attempt {attempt})"
        self._event(job_id, {"state": RUNNING, "phase": "running", "message": message}, attempt)
        self._transition(job_id, job.state, RUNNING, message)

    def _conclude(self, job_id: str, info: RayJobInfo) -> None:
        job = self.store.get(job_id)
        if job.terminal:
            return
        if info.status == "SUCCEEDED":
            self._finish_from_result(job_id, info)
        elif info.status == "STOPPED":
            self._finish(job_id, CANCELLED, "cancelled" if job_id in self._cancelling else "stopped on the Ray cluster")
        else:
            self._finish(job_id, FAILED, _clip(self._error_message(job_id) or info.message or "the Ray job failed"))

    def _error_message(self, job_id: str) -> str:
        for _, ev in reversed(self.store.events(job_id)):
            if ev.get("phase") == "error":
                problems = [str(p) for p in ev.get("problems") or [] if str(p) not in str(ev.get("message", ""))]
                text = "; ".join([str(ev["message"])] * bool(ev.get("message")) + problems)
                if text:
                    return text
        return ""

    def _finish_from_result(self, job_id: str, info: RayJobInfo | None) -> None:
        job = self.store.get(job_id)
        result = None
        for _, ev in reversed(self.store.events(job_id)):
            if ev.get("phase") == "result" and isinstance(ev.get("result"), dict):
                result = ev["result"]
                break
        path = Path(job.run_dir) / "result.json"
        if result is None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                result = json.loads(path.read_text())
        if not isinstance(result, dict):
            self._finish(job_id, FAILED, "the job ended without a result (no result event, no result.json in "
                                         f"{job.run_dir}){': ' + info.message if info and info.message else ''}")
            return
        promoted = bool(result.get("promoted"))
        self._finish(job_id, SUCCEEDED, str(result.get("reason", "")), promoted=promoted,
                     model=str(result.get("model", "")) if promoted else "",
                     version=int(result.get("version", 0) or 0) if promoted else 0,
                     metrics=result.get("metrics") if isinstance(result.get("metrics"), dict) else {})

    # -- cancel

    async def cancel(self, job_id: str, timeout: float = 60.0) -> JobRecord:
        """Stop a job that has not ended; returns its record (CANCELLED, or the state it reached meanwhile).
        Raises JobNotFound, or ValueError when the job has already ended."""
        job = self.store.get(job_id)
        if job.terminal:
            raise ValueError(f"job {job_id} already ended ({job.state}); only queued or running jobs can be cancelled")
        self._cancelling.add(job_id)
        try:
            if job.ray_job_id:
                with contextlib.suppress(RayUnavailable):
                    await self.backend.stop_job(job.ray_job_id)
            task = self._tasks.get(job_id)
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:  # Ray did not confirm the stop in time: stop following it
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not self.store.get(job_id).terminal:
                self._finish(job_id, CANCELLED, "cancelled")
            return self.store.get(job_id)
        finally:
            self._cancelling.discard(job_id)


# ---------------------------------------------------------------------------------------------------------
# Messages


def _ts(t: float | None) -> Timestamp:
    ts = Timestamp()
    if t:
        ts.FromNanoseconds(int(t * 1e9))
    return ts


def event_message(job_id: str, ev: dict) -> pb.JobEvent:
    eta = Duration()
    eta_s = ev.get("eta_s")
    if isinstance(eta_s, (int, float)) and eta_s > 0:
        eta.FromNanoseconds(int(eta_s * 1e9))
    dev_wer, loss = ev.get("dev_wer"), ev.get("loss")
    return pb.JobEvent(
        job_id=job_id, state=pb.JobState.Value(ev.get("state", QUEUED)), phase=str(ev.get("phase", "")),
        step=int(ev.get("step") or 0), total_steps=int(ev.get("total_steps") or 0), loss=float(loss) if isinstance(loss, (int, float)) and loss > 0 else 0.0,
        dev_wer=float(dev_wer) if isinstance(dev_wer, (int, float)) else -1.0, eta=eta, time=_ts(ev.get("time")),
        message=str(ev.get("message", "")),
    )


DOMAIN_LM_METRICS = ("base_target_wer_domain_lm", "domain_lm_weight", "domain_lm_dev_perplexity")  # domain_text jobs


def job_message(job: JobRecord, data: DataStore | None = None) -> pb.Job:
    """The record as a Job message; with the data store, a spec's domain text gets its line count (the text itself
    is never echoed: the spec carries its sha256)."""
    m = job.metrics or {}

    def num(key, default=0.0):
        v = m.get(key)
        return v if isinstance(v, (int, float)) else default

    msg = pb.Job(
        id=job.id, spec=JobSpec.from_record(job.spec).to_proto(), state=pb.JobState.Value(job.state), promoted=job.promoted,
        reason=job.reason, model=job.model, version=job.version,
        metrics=pb.JobMetrics(
            base_target_wer=num("base_target_wer", -1.0), adapted_target_wer=num("adapted_target_wer", -1.0),
            base_source_wer=num("base_source_wer", -1.0), adapted_source_wer=num("adapted_source_wer", -1.0),
            relatedness=num("relatedness", -1.0), trained_parameters=int(num("trained_parameters")),
            total_parameters=int(num("total_parameters")),
            **{k: m[k] for k in DOMAIN_LM_METRICS if isinstance(m.get(k), (int, float))},
        ),
        create_time=_ts(job.create_time), start_time=_ts(job.start_time), end_time=_ts(job.end_time),
        ray_job_id=job.ray_job_id, owner=job.owner,
    )
    if job.progress:
        msg.progress.CopyFrom(event_message(job.id, job.progress))
    if data is not None and msg.spec.domain_text_sha256:
        msg.spec.domain_text_lines = data.text_lines(msg.spec.domain_text_sha256)
    return msg



# ---------------------------------------------------------------------------------------------------------
# Request checks


def _data_problems(spec: JobSpec, tokenizer) -> list[str]:
    """Problems with the data a (resolved) spec names, as the job's validate phase sees them."""
    from speechadapt.asr.manifest import check_job_data

    return list(check_job_data(spec, tokenizer))


def _listing(head: str, items: list[str]) -> str:
    return head + ":\n" + "\n".join(f"- {p}" for p in items)


class AdaptationUnavailable(pb_grpc.AdaptationServicer):
    """Answers every Adaptation call with FAILED_PRECONDITION and why (e.g. the state dir cannot be written);
    recognition keeps working."""

    def __init__(self, reason: str):
        self.reason = reason

    async def _refuse(self, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"adaptation is unavailable on this server: {self.reason}")

    async def SubmitJob(self, request, context):
        await self._refuse(context)

    async def GetJob(self, request, context):
        await self._refuse(context)

    async def ListJobs(self, request, context):
        await self._refuse(context)

    async def WatchJob(self, request, context):
        await self._refuse(context)

    async def CancelJob(self, request, context):
        await self._refuse(context)

    async def UploadData(self, request_iterator, context):
        await self._refuse(context)

    async def CheckUpload(self, request, context):
        await self._refuse(context)

    async def GetJobReport(self, request, context):
        await self._refuse(context)


class AdaptationService(pb_grpc.AdaptationServicer):
    """`authenticated`: the server checks tokens (server/auth.py), so every call has a caller, and jobs are
    owned; otherwise every caller sees every job."""

    def __init__(self, manager: JobManager, registry: ModelRegistry, max_upload_bytes: int,
                 authenticated: bool = False, metrics: Metrics | None = None):
        self.manager, self.registry, self.max_upload_bytes = manager, registry, max_upload_bytes
        self.metrics = metrics or Metrics()
        self.authenticated = authenticated
        self.data: DataStore = manager.data
        self.store: JobStore = manager.store

    async def _caller(self, context) -> Caller | None:
        """Who calls (None on an open server). A call that reached here without one on an authenticated server
        is refused (the interceptor sets it; this guards against a path around it)."""
        caller = CALLER.get()
        if caller is None and self.authenticated:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no caller identity for this call: send "
                                "'authorization: Bearer <token>'")
        return caller

    async def _job(self, job_id: str, context) -> JobRecord:
        """The job, if this caller may see it; NOT_FOUND (as for a job that does not exist) otherwise."""
        caller = await self._caller(context)
        if not job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id is empty: give the job id SubmitJob returned")
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            job = None
        if job is None or (caller is not None and not caller.sees(job.owner)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {quote(job_id)} on this server (ListJobs shows them)")
        return job

    # -- jobs

    async def SubmitJob(self, request, context):
        from speechadapt.asr import ModelNotFound
        from speechadapt.asr.package import PackageError, data_tokenizer, read_card

        caller = await self._caller(context)
        if not request.HasField("spec"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "spec is missing: give a JobSpec with at least name, "
                                "base_model, train_manifest and dev_manifest")
        try:
            spec = JobSpec.from_proto(request.spec)
        except JobSpecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _listing("invalid job spec", e.problems))
        try:
            base = self.registry.resolve(spec.base_model)
            tokenizer = data_tokenizer(read_card(base.path))
        except ModelNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"base_model: {e.args[0]}")
        except PackageError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"base_model {quote(spec.base_model)} cannot be used: {e}")
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"base_model: {e}")
        spec = await self._domain_text(request.spec, spec, read_card(base.path), context)
        roots = self.manager.data_roots
        denied = await asyncio.to_thread(access_problems, {k: getattr(spec, k) for k in MANIFEST_KEYS}, roots)
        if denied:  # before anything reads the files
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, access_error(denied, roots))
        problems = []
        for key in MANIFEST_KEYS:
            uri = getattr(spec, key)
            if uri.startswith(DATA_URI) and not self.data.known(uri):
                problems.append(f"{key} {uri}: not in this server's data store; upload the data with UploadData "
                                "and use the manifest_uri it returns")
        if not problems:
            resolved = self.manager.resolve_spec(spec)
            remote_paths = not self.manager.backend.local and any(
                getattr(resolved, k) and not Path(getattr(resolved, k)).exists() for k in MANIFEST_KEYS)
            if remote_paths:  # paths only the cluster's workers can read: the job's validate phase checks them
                log.info("job data not readable here; the Ray job will check it")
            else:
                problems = await asyncio.to_thread(_data_problems, resolved, tokenizer)
                problems = [self._in_client_terms(p, spec, resolved) for p in problems]
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _listing("the job's data has problems", problems))
        reason = RayBackend.unavailable()
        if reason:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
        try:
            job = self.manager.submit(spec, owner=caller.name if caller is not None else "")
        except (OSError, sqlite3.Error) as e:
            state = self.store.path.parent
            if disk_full(e):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server's state dir {state} is full "
                                    f"({e}): the job was not recorded; submit it again when the server has space")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the server cannot record the job in its state "
                                f"dir {state} ({e}); nothing was recorded")
        return job_message(job, self.data)

    async def _domain_text(self, msg, spec: JobSpec, card, context) -> JobSpec:
        """Check and store the request's domain text; the spec then names it as text://<sha256> (records never hold
        the text itself)."""
        text, sha = msg.domain_text, msg.domain_text_sha256
        if not text and not sha:
            return spec
        if card.architecture == "whisper" or card.tokenizer.get("type") != "char":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"domain_text needs a CTC base with a lexicon "
                                f"decoder: base_model {quote(spec.base_model)} is {card.architecture} (a word LM does "
                                "not steer its decoding); drop domain_text or adapt a conformer-CTC base such as base-en")
        if text:
            size = len(text.encode("utf-8"))
            if size > MAX_DOMAIN_TEXT_BYTES:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"domain_text: {size} bytes, over the limit of "
                                    f"{MAX_DOMAIN_TEXT_BYTES} ({MAX_DOMAIN_TEXT_BYTES // 2**20} MiB); keep the most "
                                    "typical sentences")
            if not re.search(r"[A-Za-z0-9]", text):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "domain_text has no words: send sentences of "
                                    "the target domain, one or more a line")
            try:
                sha, _ = await asyncio.to_thread(self.data.put_text, text)
            except UploadError as e:
                await context.abort(e.code, str(e))
        elif self.data.text_path(sha) is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"domain_text_sha256 {quote(sha)}: this server "
                                "holds no such domain text; send the text itself in domain_text")
        return dataclasses.replace(spec, domain_text=[TEXT_URI + sha])

    def _in_client_terms(self, problem: str, spec: JobSpec, resolved: JobSpec) -> str:
        """A problem about server-side files, in the names the client used: data URIs and blob sha256s."""
        for key in MANIFEST_KEYS:
            if getattr(spec, key) != getattr(resolved, key):
                problem = problem.replace(getattr(resolved, key), getattr(spec, key))
        blobs = str(self.data.root.absolute() / "blobs")
        return re.sub(re.escape(blobs) + r"/[0-9a-f]{2}/([0-9a-f]{64})", r"blob \1", problem)

    async def GetJob(self, request, context):
        return job_message(await self._job(request.id, context), self.data)

    async def ListJobs(self, request, context):
        caller = await self._caller(context)
        states = []
        for s in request.states:
            if s not in pb.JobState.values() or s == pb.JOB_STATE_UNSPECIFIED:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"states: {s} is not a job state; use "
                                    f"{', '.join(STATES)}")
            states.append(pb.JobState.Name(s))
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size {request.page_size}: use 0 (default "
                                f"{DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = None
        if request.page_token:
            if not (request.page_token.isascii() and request.page_token.isdigit() and len(request.page_token) <= 18):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token: pass the next_page_token of the "
                                    "previous ListJobs response unchanged")
            before = int(request.page_token)
        owner = None if caller is None or caller.admin else caller.name
        jobs = self.store.list(states, limit=size + 1, before_seq=before, owner=owner)
        more = len(jobs) > size
        jobs = jobs[:size]
        return pb.ListJobsResponse(jobs=[job_message(j, self.data) for j in jobs],
                                   next_page_token=str(jobs[-1].seq) if more and jobs else "")

    async def WatchJob(self, request, context):
        job = await self._job(request.id, context)
        q = self.manager.subscribe(job.id)
        try:
            last = 0
            for seq, ev in self.store.events(job.id):
                yield event_message(job.id, ev)
                last = seq
                if ev.get("state") in TERMINAL:
                    return
            if self.store.get(job.id).terminal:
                # it ended while the events above were sent (each yield lets the loop run): send the stored rest
                for seq, ev in self.store.events(job.id, after=last):
                    yield event_message(job.id, ev)
                return
            while True:
                seq, ev = await q.get()
                if seq <= last:
                    continue
                yield event_message(job.id, ev)
                last = seq
                if ev.get("state") in TERMINAL:
                    return
        finally:
            self.manager.unsubscribe(job.id, q)

    async def CancelJob(self, request, context):
        job = await self._job(request.id, context)
        try:
            return job_message(await self.manager.cancel(job.id), self.data)
        except ValueError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))

    async def GetJobReport(self, request, context):
        job = await self._job(request.id, context)
        report = Path(job.run_dir) / "report"
        metrics = report / "metrics.json"
        if not metrics.is_file():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job.id} has no report yet ({job.state}): it is written when the job's "
                                "training and evaluation end; WatchJob follows it")
        plot, trials = report / "training.png", report / "search.png"
        return pb.JobReport(job_id=job.id, metrics_json=metrics.read_bytes(),
                            plot_png=plot.read_bytes() if plot.is_file() else b"",
                            search_png=trials.read_bytes() if trials.is_file() else b"")

    # -- uploads

    async def UploadData(self, request_iterator, context):
        caller = await self._caller(context)
        owner = caller.name if caller is not None else ""
        received = 0
        manifest = None
        written: set[str] = set()  # blobs this call wrote to: removed if the call is refused for good
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("payload")
                if manifest is not None:
                    raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "the manifest must be the last message: send "
                                      "every blob first, then the manifest")
                if kind == "blob":
                    b = req.blob
                    received += len(b.data)
                    self.metrics.uploaded(len(b.data))
                    if received > self.max_upload_bytes:
                        raise UploadError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          f"this upload passed the server's limit of {self.max_upload_bytes} bytes per "
                                          "UploadData call; send the rest in another call (completed blobs are kept, "
                                          "partial ones resume: see CheckUpload)")
                    n, _ = await asyncio.to_thread(self.data.write_chunk, b.sha256, b.total_size, b.offset, b.data, owner)
                    if n:
                        written.add(b.sha256)
                elif kind == "manifest":
                    manifest = await asyncio.to_thread(self.data.add_manifest, req.manifest.content, req.manifest.name)
                else:
                    raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "an UploadDataRequest with neither blob nor "
                                      "manifest: set one of them")
        except UploadError as e:
            if e.discard:  # quota or disk: nothing half-written stays (an interrupted call keeps its parts to resume)
                await asyncio.to_thread(self._discard, written)
            await context.abort(e.code, str(e))
        if manifest is None:
            return pb.UploadDataResponse(bytes_received=received)
        return pb.UploadDataResponse(manifest_uri=manifest.uri, utterances=manifest.utterances,
                                     audio_seconds=manifest.audio_seconds, bytes_received=received)

    def _discard(self, shas: set[str]) -> None:
        for sha in shas:
            with contextlib.suppress(UploadError):  # a malformed sha256 was never written
                self.data.discard_partial(sha)

    async def CheckUpload(self, request, context):
        if len(request.sha256) > 100_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "at most 100000 sha256s per CheckUpload call")
        try:
            shas = [check_sha(s) for s in request.sha256]
        except UploadError as e:
            await context.abort(e.code, str(e))
        states = await asyncio.to_thread(lambda: [self.data.status(s) for s in shas])
        return pb.CheckUploadResponse(blobs=[pb.BlobStatus(sha256=s.sha256, bytes_present=s.bytes_present,
                                                           complete=s.complete) for s in states])
