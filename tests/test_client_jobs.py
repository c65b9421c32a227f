"""The client side of adaptation jobs: types, uploads, job calls and the `speechadapt jobs` CLI.

Three layers:
- no network: proto <-> dataclass conversion, progress and summary lines, manifest and spec checks,
  CLI parsing, and the local errors that must come before any connection;
- a loopback Adaptation servicer that records what the client sends and answers from a script (like
  test_client_unit's Recorder), to pin the client's side of the contract (which bytes an upload
  sends from which offset, the manifest it sends, paging, watch, the CLI's output and exit codes)
  without Ray;
- the real server (speechadapt.server on loopback): uploads, dedup, resume, server-side spec checks.
  Those skip only while the server answers UNIMPLEMENTED for the RPC in question.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
from concurrent import futures
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from speechadapt.client import (
    AsyncSpeechClient, Job, JobEvent, JobMetrics, JobSpec, JobSpecError, ManifestError, SpeechAdaptError, SpeechClient,
    UploadProgress,
)
from speechadapt.client import jobs as J
from speechadapt.client.cli import build_parser, main
from speechadapt.client.upload import Upload, read_local_manifest
from speechadapt.v1 import adaptation_pb2 as pb
from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc
from speechadapt.v1 import models_pb2, models_pb2_grpc

PY = sys.executable
RECORD_KEYS = {"id", "state", "promoted", "reason", "model", "version", "metrics"}
WER_KEYS = {"base_target_wer", "adapted_target_wer", "base_source_wer", "adapted_source_wer"}
T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=timezone.utc)


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def dur(s: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(s * 1e9)))
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "speechadapt.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def make_corpus(folder: Path, n: int = 3, seconds: float = 0.5, rate: int = 16000) -> Path:
    """n distinct 16-bit WAVs (tones) under folder/audio and a manifest with text, speaker and duration."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        t = np.arange(int(rate * seconds)) / rate
        pcm = np.round(0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t) * 32767).astype(np.int16)
        sf.write(folder / "audio" / f"u{i}.wav", pcm, rate, subtype="PCM_16")
        lines.append(json.dumps({"audio": f"audio/u{i}.wav", "text": f"utterance {i}", "speaker": f"s{i % 2}",
                                 "duration": seconds}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_proto(state: int = pb.SUCCEEDED, **kw) -> pb.Job:
    spec = JobSpec("acc", "tiny@1", "data://" + "a" * 64, "data://" + "b" * 64, strategy="head").to_proto()
    j = pb.Job(id=kw.pop("id", "job-1"), spec=spec, state=state, create_time=ts(T0), **kw)
    return j


# -- types


def test_job_from_proto_record_and_dict():
    msg = job_proto(
        promoted=True, reason="target WER 30.0% -> 12.5%, source WER +0.4 points (gate 2.0)", model="acc", version=3,
        metrics=pb.JobMetrics(base_target_wer=0.3, adapted_target_wer=0.125, base_source_wer=0.05,
                              adapted_source_wer=0.054, relatedness=0.1667, trained_parameters=1000,
                              total_parameters=480000),
        start_time=ts(T0.replace(minute=1)), end_time=ts(T0.replace(minute=5, second=30)),
        progress=pb.JobEvent(job_id="job-1", state=pb.SUCCEEDED, phase="publish", step=400, total_steps=400,
                             loss=0.25, dev_wer=0.125, eta=dur(0), time=ts(T0), message="published acc@3"),
        ray_job_id="raysubmit_1",
    )
    job = Job.from_proto(msg)
    assert (job.id, job.state, job.promoted, job.model_ref, job.ended, job.succeeded) == \
        ("job-1", "SUCCEEDED", True, "acc@3", True, True)
    assert job.spec == JobSpec("acc", "tiny@1", "data://" + "a" * 64, "data://" + "b" * 64, strategy="head")
    assert job.create_time == T0 and job.duration == 270.0
    assert job.metrics == JobMetrics(0.3, 0.125, 0.05, 0.054, 0.1667, 1000, 480000)
    assert job.progress.eta is None and job.progress.dev_wer == 0.125 and job.progress.time == T0  # 0 s: no estimate
    rec = job.record()
    assert set(rec) == RECORD_KEYS and set(rec["metrics"]) == WER_KEYS
    assert rec == {"id": "job-1", "state": "SUCCEEDED", "promoted": True, "reason": msg.reason, "model": "acc",
                   "version": 3, "metrics": {"base_target_wer": 0.3, "adapted_target_wer": 0.125,
                                             "base_source_wer": 0.05, "adapted_source_wer": 0.054}}
    d = json.loads(json.dumps(job.to_dict()))  # JSON-ready
    assert RECORD_KEYS <= set(d) and d["create_time"] == "2026-11-29T08:00:00Z"
    assert d["spec"]["strategy"] == "head" and d["progress"]["phase"] == "publish"
    assert d["metrics"]["relatedness"] == 0.1667 and d["ray_job_id"] == "raysubmit_1"


def test_unmeasured_and_unset_fields_are_none():
    job = Job.from_proto(pb.Job(id="j", state=pb.QUEUED))
    assert job.state == "QUEUED" and not job.ended and job.spec is None and job.progress is None
    assert job.metrics.wers() == dict.fromkeys(WER_KEYS) and job.metrics.relatedness is None
    assert job.create_time is None and job.duration is None and job.model_ref == ""
    ev = JobEvent.from_proto(pb.JobEvent(job_id="j", state=pb.RUNNING, phase="baseline", dev_wer=-1))
    assert ev.dev_wer is None and ev.eta is None and ev.time is None and not ev.ended
    assert JobEvent.from_proto(pb.JobEvent(state=9)).state == "STATE_9"
    assert Job.from_proto(pb.Job(id="j", metrics=pb.JobMetrics(relatedness=-1))).metrics.relatedness is None
    assert hash(ev) == hash(JobEvent.from_proto(pb.JobEvent(job_id="j", state=pb.RUNNING, phase="baseline",
                                                            dev_wer=-1)))


def test_progress_and_summary_lines():
    ev = JobEvent("j", "RUNNING", "train", step=120, total_steps=400, loss=0.5321, dev_wer=0.123, eta=65)
    assert J.progress_line(ev) == "train  step 120/400  loss 0.532  dev WER 12.3%  ETA 1m05s"
    assert J.progress_line(JobEvent("j", "QUEUED", message="waiting for a worker")) == "queued  waiting for a worker"
    assert J.progress_line(JobEvent("j", "FAILED", "done", message="no tokenizer")) == "FAILED  no tokenizer"
    assert J.progress_line(JobEvent("j", "CANCELLED", "done", message="cancelled")) == "CANCELLED"
    assert J.progress_line(JobEvent("j", "RUNNING", "baseline", message="base model on dev")) == \
        "baseline  base model on dev"
    assert [J.format_duration(s) for s in (None, 4.4, 65, 3725)] == ["-", "4s", "1m05s", "1h02m"]
    job = Job("j", "SUCCEEDED", promoted=True, model="acc", version=2, reason="better",
              metrics=JobMetrics(0.3, 0.125, 0.05, 0.054), start_time=T0, end_time=T0.replace(minute=4))
    lines = J.summary_lines(job)
    assert lines[0] == "job j SUCCEEDED in 4m00s"
    assert lines[1].split() == ["base", "adapted"]
    assert lines[2].split() == ["target", "WER", "30.0%", "12.5%", "-17.5", "points"]
    assert lines[3].split() == ["source", "WER", "5.0%", "5.4%", "+0.4", "points"]
    assert lines[4] == "promoted: acc@2 (better)"
    no = Job("j", "SUCCEEDED", reason="source WER rose 3.1 points (gate 2.0)", metrics=JobMetrics(0.3, 0.2, 0.05, 0.081))
    assert J.summary_lines(no)[-1] == "not promoted: source WER rose 3.1 points (gate 2.0)"
    assert J.summary_lines(Job("j", "FAILED", reason="no such base model")) == \
        ["job j FAILED", "reason: no such base model"]


def test_state_filters_and_ids():
    assert J.state_values(None) == []
    assert J.state_values("running") == [pb.RUNNING]
    assert J.state_values(["QUEUED", "Succeeded", pb.FAILED]) == [pb.QUEUED, pb.SUCCEEDED, pb.FAILED]
    with pytest.raises(ValueError, match="unknown job state 'done': use QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED"):
        J.state_values(["done"])
    with pytest.raises(ValueError, match="give a job id"):
        J.check_id("  ")


def test_server_problems_split():
    assert J.server_problems("invalid job spec:\n- name 'a b': use letters\n- max_epochs 0: use at least 1") == \
        ("invalid job spec", ["name 'a b': use letters", "max_epochs 0: use at least 1"])
    assert J.server_problems("invalid job spec: name 'a b': use letters; max_epochs 0: use at least 1") == \
        ("invalid job spec", ["name 'a b': use letters", "max_epochs 0: use at least 1"])
    assert J.server_problems("train_manifest: line 3: audio not found\ndev_manifest: empty") == \
        ("", ["train_manifest: line 3: audio not found", "dev_manifest: empty"])
    assert J.server_problems("base_model: no model 'nope'") == ("", ["base_model: no model 'nope'"])


# -- local manifests and specs


def test_read_local_manifest_lists_every_bad_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found: .*nope.jsonl"):
        read_local_manifest(tmp_path / "nope.jsonl")
    m = make_corpus(tmp_path / "c", n=2)
    (tmp_path / "c" / "audio" / "empty.wav").write_bytes(b"")
    m.write_text(m.read_text() + "\n".join([
        '{"audio": "audio/missing.wav", "text": "x"}',
        "{not json",
        '{"audio": "audio/u0.wav"}',
        '{"audio": "audio/empty.wav", "text": "y"}',
        '{"audio": "s3://bucket/a.wav", "text": "z"}',
    ]) + "\n")
    with pytest.raises(ManifestError) as e:
        read_local_manifest(m)
    p = e.value.problems
    assert len(p) == 5
    assert p[0].startswith(f"{m}:3: audio file not found: ") and p[0].endswith("missing.wav")
    assert p[1].startswith(f"{m}:4: not valid JSON")
    assert p[2] == f'{m}:5: each line needs string fields "audio" and "text"'
    assert p[3].startswith(f"{m}:6: audio file is empty")
    assert p[4] == f"{m}:7: audio 's3://bucket/a.wav' is a URI; upload needs local files"
    assert "missing.wav" in str(e.value) and isinstance(e.value, ValueError)


def test_upload_plan_content_and_offsets(tmp_path):
    m = make_corpus(tmp_path, n=3)
    # a fourth line reusing u0 and a copy of u1 under another name: blobs are per content
    (tmp_path / "audio" / "copy.wav").write_bytes((tmp_path / "audio" / "u1.wav").read_bytes())
    with m.open("a") as f:
        f.write(json.dumps({"audio": "audio/u0.wav", "text": "again"}) + "\n")
        f.write(json.dumps({"audio": str(tmp_path / "audio" / "copy.wav"), "text": "copy", "extra": 1}) + "\n")
    seen: list[UploadProgress] = []
    up = Upload(read_local_manifest(m), chunk_bytes=4000, on_progress=seen.append)
    up.hash()
    shas = [sha(tmp_path / "audio" / f"u{i}.wav") for i in range(3)]
    assert [b.sha256 for b in up.unique_blobs] == shas
    assert [list(r.sha256) for r in up.check_requests()] == [shas]
    lines = [json.loads(x) for x in up.content().decode().splitlines()]
    assert [x["audio"] for x in lines] == [shas[0], shas[1], shas[2], shas[0], shas[1]]
    assert lines[0] == {"audio": shas[0], "text": "utterance 0", "speaker": "s0", "duration": 0.5}
    assert lines[4] == {"audio": shas[1], "text": "copy"}  # unknown keys are not uploaded
    size = (tmp_path / "audio" / "u0.wav").stat().st_size
    up.add_status(pb.CheckUploadResponse(blobs=[pb.BlobStatus(sha256=shas[0], bytes_present=size, complete=True),
                                                pb.BlobStatus(sha256=shas[1], bytes_present=5000)]))
    assert up.start(up.blobs[tmp_path / "audio" / "u0.wav"]) is None
    assert up.start(up.blobs[tmp_path / "audio" / "u1.wav"]) == 5000
    assert up.start(up.blobs[tmp_path / "audio" / "u2.wav"]) == 0
    reqs = list(up.requests())
    assert up.error is None
    chunks = [r.blob for r in reqs[:-1]]
    assert [(c.sha256, c.offset) for c in chunks] == \
        [(shas[1], 5000), (shas[1], 9000), (shas[1], 13000)] + [(shas[2], o) for o in range(0, size, 4000)]
    assert b"".join(c.data for c in chunks[:3]) == (tmp_path / "audio" / "u1.wav").read_bytes()[5000:]
    assert all(c.total_size == size for c in chunks)
    assert reqs[-1].manifest.name == "manifest.jsonl" and reqs[-1].manifest.content == up.content()
    assert [p.stage for p in seen][:3] == ["hash"] * 3 and seen[-1].stage == "send"
    assert seen[-1].bytes_sent == seen[-1].bytes_to_send == 2 * size - 5000
    assert seen[-1].bytes_present == size + 5000 and seen[-1].files_done == seen[-1].files_to_send == 2
    with pytest.raises(ValueError, match="chunk_bytes"):
        Upload(read_local_manifest(m), chunk_bytes=0)


def test_spec_coercion_and_local_manifests(tmp_path, monkeypatch):
    m = make_corpus(tmp_path / "data")
    keys = {"name": "acc", "base_model": "tiny@1", "train_manifest": "data/manifest.jsonl",
            "dev_manifest": "data/manifest.jsonl"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(keys))
    spec = J.load_spec(tmp_path / "job.yaml")
    assert spec.train_manifest == str(m.resolve())  # relative to the YAML file
    assert J.load_spec(str(tmp_path / "job.yaml")) == spec
    with pytest.raises(JobSpecError) as e:
        J.load_spec({"name": "a b", "base_model": "tiny@0", "train_manifest": "x", "dev_manifest": "y",
                     "max_epochs": 0})
    assert len(e.value.problems) == 3
    with pytest.raises(TypeError, match="spec must be"):
        J.load_spec(42)
    raw = pb.JobSpec(name="bad name")
    assert J.load_spec(raw) is raw  # protos go to the server unchecked
    monkeypatch.chdir(tmp_path)
    local = J.local_manifests(J.load_spec(keys))  # relative to the current folder
    assert set(local) == {"train_manifest", "dev_manifest"}
    assert local["train_manifest"] is local["dev_manifest"]
    uris = J.uploaded_uris(spec, {m.resolve(): "data://" + "c" * 64})
    assert J.with_uris(spec, uris).dev_manifest == "data://" + "c" * 64
    # URIs and paths that are no local file are for the server's workers: not uploaded
    assert J.local_manifests(JobSpec("acc", "tiny", "data://" + "a" * 64, "/workers/dev.jsonl")) == {}
    (tmp_path / "data" / "audio" / "u2.wav").unlink()
    with pytest.raises(ManifestError) as e:
        J.local_manifests(JobSpec("acc", "tiny", "data/manifest.jsonl", "/workers/dev.jsonl"))
    assert e.value.problems == [f"train_manifest: {m.resolve()}:3: audio file not found: {m.resolve().parent}/audio/u2.wav"]
    assert str(e.value).startswith("cannot upload the job's data:\n  train_manifest: ")


# -- CLI without a server


def test_cli_parses_jobs_forms(monkeypatch):
    monkeypatch.delenv("SPEECHADAPT_SERVER", raising=False)
    p = build_parser()
    a = p.parse_args(["jobs", "submit", "job.yaml", "--server", "h:1", "--wait", "--json", "--upload",
                      "--timeout", "90", "--ca-cert", "ca.pem"])
    assert (a.spec, a.server, a.wait, a.json, a.upload, a.timeout, a.ca_cert) == \
        ("job.yaml", "h:1", True, True, True, 90.0, "ca.pem")
    a = p.parse_args(["jobs", "submit", "job.yaml"])
    assert not (a.wait or a.json or a.upload) and a.timeout is None and a.server == "127.0.0.1:50051"
    a = p.parse_args(["jobs", "list", "--state", "RUNNING", "--state", "queued,failed", "--json"])
    assert a.state == ["RUNNING", "queued,failed"] and a.json
    assert p.parse_args(["jobs", "get", "j1", "--json"]).id == "j1"
    assert p.parse_args(["jobs", "watch", "j1"]).id == "j1"
    assert p.parse_args(["jobs", "cancel", "j1"]).id == "j1"
    a = p.parse_args(["jobs", "report", "j1", "--out", "rep"])
    assert (a.id, a.out) == ("j1", "rep")


@pytest.mark.parametrize("argv", [
    ["jobs"], ["jobs", "submit"], ["jobs", "report", "j1"], ["jobs", "submit", "j.yaml", "--timeout", "0"],
    ["jobs", "get"],
])
def test_cli_jobs_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_cli_invalid_spec_rejected_before_connecting(tmp_path):
    # nothing listens on the port: a connection attempt would exit 1 with UNAVAILABLE
    server = f"127.0.0.1:{free_port()}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a b\nbase_model: tiny@0\ntrain_manifest: t.jsonl\ndev_manifest: d.jsonl\n"
                   "strategy: lora\nmax_epochs: 0\n")
    r = run_cli("jobs", "submit", str(bad), "--server", server)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == f"error: invalid job spec {bad}:"
    assert len(lines) == 5 and all(x.startswith("  - ") for x in lines[1:])
    assert any("strategy 'lora'" in x for x in lines) and any("max_epochs 0" in x for x in lines)
    (tmp_path / "typo.yaml").write_text("name: a\nbase_model: tiny\ntrain_manifest: t\ndev_manifest: d\nepochs: 3\n")
    r = run_cli("jobs", "submit", str(tmp_path / "typo.yaml"), "--server", server)
    assert r.returncode == 2 and "epochs" in r.stderr
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    r = run_cli("jobs", "submit", str(tmp_path / "broken.yaml"), "--server", server)
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    r = run_cli("jobs", "submit", str(tmp_path / "missing.yaml"), "--server", server)
    assert r.returncode == 2 and "cannot read job spec" in r.stderr


def test_cli_upload_checks_audio_before_connecting(tmp_path):
    server = f"127.0.0.1:{free_port()}"
    m = make_corpus(tmp_path / "data")
    (tmp_path / "data" / "audio" / "u1.wav").unlink()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "name": "acc", "base_model": "tiny", "train_manifest": "data/manifest.jsonl",
        "dev_manifest": "data/dev.jsonl"}))
    r = run_cli("jobs", "submit", str(tmp_path / "job.yaml"), "--upload", "--server", server)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == f"error: cannot upload the data of {tmp_path / 'job.yaml'}:"
    assert f"train_manifest: {m.resolve()}:2: audio file not found: " in r.stderr
    assert "dev_manifest" not in r.stderr  # no local file: a path for the server's workers
    assert "UNAVAILABLE" not in r.stderr


def test_cli_unreachable_server_exits_1(tmp_path):
    server = f"127.0.0.1:{free_port()}"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "name": "acc", "base_model": "tiny", "train_manifest": "/data/t.jsonl", "dev_manifest": "/data/d.jsonl"}))
    r = run_cli("jobs", "submit", str(tmp_path / "job.yaml"), "--server", server)
    assert r.returncode == 1 and r.stderr.startswith("error: UNAVAILABLE: ")
    r = run_cli("jobs", "list", "--state", "done", "--server", server)
    assert r.returncode == 2 and "unknown job state 'done'" in r.stderr


# -- a loopback Adaptation servicer that records requests and plays a script


class Scripted(pb_grpc.AdaptationServicer):
    """Records every request. CheckUpload answers from `held` (sha256 -> bytes present, complete);
    SubmitJob checks the spec with JobSpec.from_proto (INVALID_ARGUMENT listing problems) and queues
    job "job-<n>"; WatchJob plays `events`, GetJob returns `final` once they are played; ListJobs
    pages two jobs per page; GetJobReport returns fixed files."""

    def __init__(self):
        self.held: dict[str, tuple[int, bool]] = {}
        self.checks: list[list[str]] = []
        self.uploads: list[list[pb.UploadDataRequest]] = []
        self.submitted: list[pb.JobSpec] = []
        self.final_state = pb.SUCCEEDED
        self.promoted = True
        self.watched = 0
        self.cancelled: list[str] = []
        self.list_requests: list[pb.ListJobsRequest] = []

    def CheckUpload(self, request, context):
        self.checks.append(list(request.sha256))
        return pb.CheckUploadResponse(blobs=[
            pb.BlobStatus(sha256=s, bytes_present=self.held.get(s, (0, False))[0], complete=self.held.get(s, (0, False))[1])
            for s in request.sha256])

    def UploadData(self, request_iterator, context):
        reqs = list(request_iterator)
        self.uploads.append(reqs)
        if not reqs or reqs[-1].WhichOneof("payload") != "manifest":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload ended before its manifest")
        content = reqs[-1].manifest.content
        return pb.UploadDataResponse(manifest_uri="data://" + hashlib.sha256(content).hexdigest(),
                                     utterances=len(content.splitlines()), audio_seconds=1.5,
                                     bytes_received=sum(len(r.blob.data) for r in reqs[:-1]))

    def _job(self, n: int, state=pb.QUEUED) -> pb.Job:
        return pb.Job(id=f"job-{n}", spec=self.submitted[n - 1] if n <= len(self.submitted) else None,
                      state=state, create_time=ts(T0))

    def SubmitJob(self, request, context):
        try:
            JobSpec.from_proto(request.spec)
        except JobSpecError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.submitted.append(request.spec)
        return self._job(len(self.submitted))

    def _events(self, job_id):
        yield pb.JobEvent(job_id=job_id, state=pb.QUEUED, dev_wer=-1, time=ts(T0), message="waiting for a worker")
        yield pb.JobEvent(job_id=job_id, state=pb.RUNNING, phase="baseline", dev_wer=-1, time=ts(T0.replace(second=5)))
        for step in (50, 100):
            yield pb.JobEvent(job_id=job_id, state=pb.RUNNING, phase="train", step=step, total_steps=100,
                              loss=1.0 / step, dev_wer=0.3 - step / 1000, eta=dur(100 - step),
                              time=ts(T0.replace(second=5 + step // 10)))
        yield pb.JobEvent(job_id=job_id, state=self.final_state, phase="publish", dev_wer=-1,
                          time=ts(T0.replace(minute=1)))

    def WatchJob(self, request, context):
        self.watched += 1
        if request.id.startswith("missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.id!r}")
        yield from self._events(request.id)

    def GetJob(self, request, context):
        if request.id.startswith("missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.id!r}")
        j = self._job(int(request.id.split("-")[1]), self.final_state)
        j.start_time.CopyFrom(ts(T0.replace(second=1)))
        j.end_time.CopyFrom(ts(T0.replace(minute=1, second=1)))
        j.metrics.CopyFrom(pb.JobMetrics(base_target_wer=0.3, adapted_target_wer=0.2, base_source_wer=0.05,
                                         adapted_source_wer=0.06, relatedness=-1))
        if self.final_state == pb.SUCCEEDED:
            j.promoted, j.model, j.version = self.promoted, ("acc" if self.promoted else ""), (2 if self.promoted else 0)
            j.reason = "target WER improved by 10.0 points" if self.promoted else "source WER rose 1.0 point"
        else:
            j.reason = "the base model has no tokenizer"
        return j

    def ListJobs(self, request, context):
        self.list_requests.append(request)
        start = int(request.page_token or 0)
        states = [pb.QUEUED, pb.RUNNING, pb.SUCCEEDED, pb.FAILED, pb.CANCELLED]
        jobs = [pb.Job(id=f"job-{i}", state=states[i % 5]) for i in range(1, 6)]
        if request.states:
            jobs = [j for j in jobs if j.state in request.states]
        page = jobs[start:start + 2]
        return pb.ListJobsResponse(jobs=page, next_page_token=str(start + 2) if start + 2 < len(jobs) else "")

    def CancelJob(self, request, context):
        self.cancelled.append(request.id)
        return pb.Job(id=request.id, state=pb.CANCELLED)

    def GetJobReport(self, request, context):
        return pb.JobReport(job_id=request.id, metrics_json=json.dumps({"job_id": request.id, "history": [1, 2]}).encode(),
                            plot_png=b"\x89PNG\r\n\x1a\nfake")


class OneModel(models_pb2_grpc.ModelsServicer):
    """GetModel knows tiny@1 only (submit_job with upload looks the base model up first)."""

    def GetModel(self, request, context):
        if request.model not in ("tiny", "tiny@1"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} not found (available: tiny@1)")
        return models_pb2.Model(name="tiny", version=1)


@pytest.fixture
def scripted():
    svc = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AdaptationServicer_to_server(svc, server)
    models_pb2_grpc.add_ModelsServicer_to_server(OneModel(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield svc, f"127.0.0.1:{port}"
    server.stop(0)


def test_upload_sends_only_missing_bytes(tmp_path, scripted):
    svc, address = scripted
    m = make_corpus(tmp_path, n=3)
    wavs = [tmp_path / "audio" / f"u{i}.wav" for i in range(3)]
    size = wavs[0].stat().st_size
    svc.held = {sha(wavs[0]): (size, True), sha(wavs[1]): (3000, False)}
    seen: list[UploadProgress] = []
    with SpeechClient(address, timeout=30) as client:
        uri = client.upload_data(m, chunk_bytes=2048, on_progress=seen.append)
    reqs = svc.uploads[0]
    assert svc.checks == [[sha(w) for w in wavs]]
    blobs = [r.blob for r in reqs[:-1]]
    assert {b.sha256 for b in blobs} == {sha(wavs[1]), sha(wavs[2])}
    assert b"".join(b.data for b in blobs if b.sha256 == sha(wavs[1])) == wavs[1].read_bytes()[3000:]
    assert b"".join(b.data for b in blobs if b.sha256 == sha(wavs[2])) == wavs[2].read_bytes()
    assert [b.offset for b in blobs if b.sha256 == sha(wavs[1])][0] == 3000
    assert all(len(b.data) <= 2048 for b in blobs)
    manifest = reqs[-1].manifest
    assert uri == "data://" + hashlib.sha256(manifest.content).hexdigest()
    assert [json.loads(x)["audio"] for x in manifest.content.decode().splitlines()] == [sha(w) for w in wavs]
    done = seen[-1]
    assert done.stage == "done" and done.manifest_uri == uri and done.utterances == 3
    assert done.bytes_received == 2 * size - 3000 == done.bytes_sent


class PerCallLimit(Scripted):
    """Like the real server's max_upload_bytes: a call that passes `limit` blob bytes is refused with
    RESOURCE_EXHAUSTED, and what arrived before is kept (and reported by CheckUpload)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.received: dict[str, bytearray] = {}

    def UploadData(self, request_iterator, context):
        reqs, got = [], 0
        self.uploads.append(reqs)
        for req in request_iterator:
            reqs.append(req)
            if req.WhichOneof("payload") == "blob":
                b = req.blob
                got += len(b.data)
                if got > self.limit:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"over {self.limit} bytes per UploadData call")
                data = self.received.setdefault(b.sha256, bytearray())
                assert b.offset == len(data), "chunks must continue where the held bytes end"
                data += b.data
                self.held[b.sha256] = (len(data), len(data) == b.total_size)
        content = reqs[-1].manifest.content
        return pb.UploadDataResponse(manifest_uri="data://" + hashlib.sha256(content).hexdigest(),
                                     utterances=len(content.splitlines()), bytes_received=got)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_upload_continues_in_new_calls_past_a_per_call_limit(tmp_path, asynchronous):
    m = make_corpus(tmp_path, n=3, seconds=1.0)
    wavs = [tmp_path / "audio" / f"u{i}.wav" for i in range(3)]
    svc = PerCallLimit(limit=20000)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AdaptationServicer_to_server(svc, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        if asynchronous:
            async def go():
                async with AsyncSpeechClient(address, timeout=30) as client:
                    return await client.upload_data(m, chunk_bytes=4096)
            uri = asyncio.run(go())
        else:
            with SpeechClient(address, timeout=30) as client:
                uri = client.upload_data(m, chunk_bytes=4096)
        assert uri.startswith("data://")
        # 96 kB in 4 kB chunks, 20 kB a call: 4 chunks a call are kept, so 5 refused calls, then the rest and
        # the manifest; held bytes are never sent again (the servicer checks each offset)
        assert len(svc.uploads) == 6 and svc.uploads[-1][-1].WhichOneof("payload") == "manifest"
        assert all(bytes(svc.received[sha(w)]) == w.read_bytes() for w in wavs)
        svc.received.clear()
        svc.held.clear()
        svc.limit = 100  # less than one chunk: no call adds anything, so the error is the caller's
        with SpeechClient(address, timeout=30) as client, pytest.raises(SpeechAdaptError) as e:
            client.upload_data(m, chunk_bytes=4096)
        assert e.value.code == "RESOURCE_EXHAUSTED" and "over 100 bytes" in e.value.message
    finally:
        server.stop(0)


def test_async_upload_and_submit_with_upload(tmp_path, scripted):
    svc, address = scripted
    m = make_corpus(tmp_path / "data", n=2)
    spec = {"name": "acc", "base_model": "tiny@1", "train_manifest": str(m), "dev_manifest": str(m),
            "source_dev_manifest": "/workers/src.jsonl"}
    stages: list[str] = []

    async def go():
        async with AsyncSpeechClient(address, timeout=30) as client:
            uri = await client.upload_data(m, on_progress=lambda p: stages.append(p.stage))
            job = await client.submit_job(spec, upload=True)
            events = [e async for e in client.watch_job(job.id)]
            final = await client.wait_job(job.id, on_event=lambda e: asyncio.sleep(0))
            listed = await client.list_jobs(["succeeded", "FAILED"])
            return uri, job, events, final, listed

    uri, job, events, final, listed = asyncio.run(go())
    assert stages[0] == "hash" and "send" in stages and stages[-1] == "done"
    assert len(svc.uploads) == 2  # upload_data, then the one shared train/dev manifest
    sent = svc.submitted[0]
    assert sent.train_manifest == sent.dev_manifest == uri
    assert sent.source_dev_manifest == "/workers/src.jsonl"  # not local: left as it is
    assert job.state == "QUEUED" and job.spec.dev_manifest == uri
    assert [e.phase for e in events] == ["", "baseline", "train", "train", "publish"] and events[-1].ended
    assert final.state == "SUCCEEDED" and final.model_ref == "acc@2"
    assert [(j.id, j.state) for j in listed] == [("job-2", "SUCCEEDED"), ("job-3", "FAILED")]


def test_sync_job_calls(tmp_path, scripted):
    svc, address = scripted
    spec = JobSpec("acc", "tiny@1", "/w/t.jsonl", "/w/d.jsonl")
    seen: list[JobEvent] = []
    with SpeechClient(address, timeout=30) as client:
        job = client.submit_job(spec)
        final = client.wait_job(job.id, timeout=30, on_event=seen.append)
        all_jobs = client.list_jobs(page_size=2)
        cancelled = client.cancel_job("job-7")
        metrics = client.get_job_report(job.id, tmp_path / "rep" / "j1")
        with pytest.raises(SpeechAdaptError) as e:
            client.submit_job(pb.JobSpec(name="a b", base_model="tiny", train_manifest="/t", dev_manifest="/d"))
        with pytest.raises(SpeechAdaptError) as nf:
            client.get_job("missing-1")
        with pytest.raises(SpeechAdaptError) as w:
            list(client.watch_job("missing-2"))
    assert JobSpec.from_proto(svc.submitted[0]) == spec
    assert [e.phase or e.state for e in seen] == ["QUEUED", "baseline", "train", "train", "publish"]
    assert seen[2].eta == 50.0 and seen[2].dev_wer == pytest.approx(0.25) and seen[1].dev_wer is None
    assert final.succeeded and final.promoted and final.metrics.adapted_target_wer == 0.2
    assert [j.id for j in all_jobs] == [f"job-{i}" for i in range(1, 6)]
    assert [r.page_token for r in svc.list_requests] == ["", "2", "4"]
    assert cancelled.state == "CANCELLED" and svc.cancelled == ["job-7"]
    assert metrics == {"job_id": job.id, "history": [1, 2]}
    assert (tmp_path / "rep" / "j1" / "training.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "rep" / "j1" / "metrics.json").read_text()) == metrics
    assert e.value.code == "INVALID_ARGUMENT" and "name 'a b'" in e.value.message
    assert nf.value.code == w.value.code == "NOT_FOUND"


def test_wait_job_timeout_says_the_job_keeps_running(scripted):
    _, address = scripted
    gate = threading.Event()

    class Slow(Scripted):
        def WatchJob(self, request, context):
            yield pb.JobEvent(job_id=request.id, state=pb.RUNNING, phase="train")
            gate.wait(5)

    svc = Slow()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AdaptationServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with SpeechClient(f"127.0.0.1:{port}") as client, pytest.raises(SpeechAdaptError) as e:
            client.wait_job("job-1", timeout=0.5)
    finally:
        gate.set()
        server.stop(0)
    assert e.value.code == "DEADLINE_EXCEEDED"
    assert str(e.value) == "DEADLINE_EXCEEDED: job job-1 did not end within 0.5 s; it keeps running: wait again, or cancel it"


def write_spec(folder: Path, **keys) -> Path:
    data = {"name": "acc", "base_model": "tiny@1", "train_manifest": "/w/train.jsonl", "dev_manifest": "/w/dev.jsonl"}
    data.update(keys)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_submit_wait_json_is_exactly_the_record(tmp_path, scripted):
    svc, address = scripted
    spec = write_spec(tmp_path)
    r = run_cli("jobs", "submit", str(spec), "--server", address, "--wait", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    rec = json.loads(r.stdout)
    assert set(rec) == RECORD_KEYS and set(rec["metrics"]) == WER_KEYS
    assert rec == {"id": "job-1", "state": "SUCCEEDED", "promoted": True,
                   "reason": "target WER improved by 10.0 points", "model": "acc", "version": 2,
                   "metrics": {"base_target_wer": 0.3, "adapted_target_wer": 0.2, "base_source_wer": 0.05,
                               "adapted_source_wer": 0.06}}
    progress = r.stderr.splitlines()  # not a TTY: one line per event
    assert progress == ["job job-1 QUEUED", "queued  waiting for a worker", "baseline",
                        "train  step 50/100  loss 0.020  dev WER 25.0%  ETA 50s",
                        "train  step 100/100  loss 0.010  dev WER 20.0%", "SUCCEEDED"]


def test_cli_submit_human_summary_and_exit_codes(tmp_path, scripted):
    svc, address = scripted
    spec = write_spec(tmp_path)
    r = run_cli("jobs", "submit", str(spec), "--server", address)
    assert (r.returncode, r.stdout, r.stderr) == (0, "job-1\n", "")
    r = run_cli("jobs", "submit", str(spec), "--server", address, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "QUEUED"
    svc.promoted = False
    r = run_cli("jobs", "submit", str(spec), "--server", address, "--wait")
    assert r.returncode == 0, r.stderr  # SUCCEEDED, even when not promoted
    out = r.stdout.splitlines()
    assert out[0] == "job job-3 QUEUED" and "train  step 100/100  loss 0.010  dev WER 20.0%" in out
    tail = out[-5:]
    assert tail[0] == "job job-3 SUCCEEDED in 1m00s"
    assert tail[2].split() == ["target", "WER", "30.0%", "20.0%", "-10.0", "points"]
    assert tail[4] == "not promoted: source WER rose 1.0 point"
    svc.final_state = pb.FAILED
    r = run_cli("jobs", "submit", str(spec), "--server", address, "--wait", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["state"] == "FAILED"
    svc.final_state = pb.CANCELLED
    r = run_cli("jobs", "watch", "job-1", "--server", address)
    assert r.returncode == 1 and "job job-1 CANCELLED in 1m00s" in r.stdout.splitlines()


def test_cli_server_rejection_lists_problems_exit_2(tmp_path, scripted):
    _, address = scripted

    class Picky(Scripted):
        def SubmitJob(self, request, context):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid job spec: base_model 'tiny@1': no such model "
                          "(have: base-en@1); train_manifest '/w/train.jsonl': not readable by the workers")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AdaptationServicer_to_server(Picky(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        r = run_cli("jobs", "submit", str(write_spec(tmp_path)), "--server", f"127.0.0.1:{port}", "--wait")
    finally:
        server.stop(0)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["error: invalid job spec (INVALID_ARGUMENT):",
                                     "  - base_model 'tiny@1': no such model (have: base-en@1)",
                                     "  - train_manifest '/w/train.jsonl': not readable by the workers"]


def test_cli_upload_list_get_cancel_report(tmp_path, scripted):
    svc, address = scripted
    m = make_corpus(tmp_path / "data", n=2)
    spec = write_spec(tmp_path, train_manifest="data/manifest.jsonl", dev_manifest="data/manifest.jsonl")
    r = run_cli("jobs", "submit", str(spec), "--upload", "--server", address)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "job-1"
    uri = svc.submitted[0].train_manifest
    assert uri.startswith("data://") and svc.submitted[0].dev_manifest == uri
    assert any(x.startswith("upload manifest.jsonl: hashing") for x in lines)
    assert lines[-2].startswith("uploaded manifest.jsonl: 2 utterances, 2s of audio, 32.1 kB sent -> ")
    assert lines[-2].endswith(uri)
    assert len(svc.uploads) == 1 and m.exists()

    r = run_cli("jobs", "list", "--server", address, "--state", "succeeded,failed", "--state", "QUEUED")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["ID", "STATE", "NAME", "BASE", "CREATED", "PROGRESS/RESULT"]
    assert [x.split()[:2] for x in rows[1:]] == [["job-2", "SUCCEEDED"], ["job-3", "FAILED"], ["job-5", "QUEUED"]]
    r = run_cli("jobs", "list", "--server", address, "--json")
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == [f"job-{i}" for i in range(1, 6)]

    r = run_cli("jobs", "get", "job-1", "--server", address)
    assert r.returncode == 0, r.stderr
    details = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.stdout.splitlines())
    assert details["id"] == "job-1" and details["state"] == "SUCCEEDED" and details["promoted"] == "yes: acc@2"
    r = run_cli("jobs", "get", "job-1", "--server", address, "--json")
    d = json.loads(r.stdout)
    assert RECORD_KEYS <= set(d) and d["spec"]["train_manifest"] == uri
    r = run_cli("jobs", "get", "missing-1", "--server", address)
    assert r.returncode == 1 and r.stderr.startswith("error: NOT_FOUND: no job 'missing-1'")

    (tmp_path / "other").mkdir()
    r = run_cli("jobs", "submit", str(write_spec(tmp_path / "other", base_model="nope", train_manifest=str(m),
                                                 dev_manifest=str(m))), "--upload", "--server", address)
    assert r.returncode == 2 and len(svc.uploads) == 1 and len(svc.checks) == 1  # refused before uploading
    assert r.stderr.splitlines() == ["error: the server rejected it (NOT_FOUND):",
                                     "  - base_model: model 'nope' not found (available: tiny@1)"]

    r = run_cli("jobs", "cancel", "job-2", "--server", address)
    assert (r.returncode, r.stdout) == (0, "job job-2 CANCELLED\n")
    r = run_cli("jobs", "report", "job-1", "--out", str(tmp_path / "rep"), "--server", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'rep' / 'metrics.json'}, {tmp_path / 'rep' / 'training.png'}"
    r = run_cli("jobs", "watch", "job-1", "--server", address, "--json")
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and [e["phase"] for e in events][-1] == "publish" and events[0]["time"].endswith("Z")


def test_cli_progress_is_one_rewritten_line_on_a_tty(tmp_path, scripted):
    import os
    import pty
    import select

    _, address = scripted
    master, slave = pty.openpty()
    proc = subprocess.Popen([PY, "-m", "speechadapt.client.cli", "jobs", "watch", "job-1", "--server", address],
                            stdout=slave, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    proc.wait(60)
    os.close(master)
    text = out.decode().replace("\r\n", "\n")  # the terminal turns \n into \r\n
    progress, _, summary = text.partition("\n")
    assert proc.returncode == 0, proc.stderr.read()
    assert progress.startswith("\rqueued  waiting for a worker") and progress.count("\r") == 5
    assert "\rtrain  step 100/100  loss 0.010  dev WER 20.0%" in progress
    assert summary.splitlines()[0] == "job job-1 SUCCEEDED in 1m00s"


# -- the real server (speechadapt.server on loopback)


def _unimplemented(e: SpeechAdaptError, rpc: str) -> None:
    """Skip (only) while the server answers UNIMPLEMENTED: the Adaptation service is being written."""
    if e.code == "UNIMPLEMENTED":
        pytest.skip(f"the server does not implement Adaptation.{rpc} yet ({e.message})")


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """A real SpeechServer with an empty model store (uploads and spec checks need no model)."""
    pytest.importorskip("torch", reason="the real server needs the server extra")
    from conftest import ServerThread

    root = tmp_path_factory.mktemp("adaptation-server")
    srv = ServerThread(model_store=root / "store")
    yield srv
    srv.stop()


def test_real_upload_then_nothing_resent(tmp_path, real_server):
    m = make_corpus(tmp_path, n=3, seconds=0.5)
    total = sum((tmp_path / "audio" / f"u{i}.wav").stat().st_size for i in range(3))
    first: list[UploadProgress] = []
    again: list[UploadProgress] = []
    with SpeechClient(real_server.address, timeout=60) as client:
        try:
            uri = client.upload_data(m, on_progress=first.append)
        except SpeechAdaptError as e:
            _unimplemented(e, "UploadData/CheckUpload")
            raise
        assert re.fullmatch(r"data://[0-9a-f]{64}", uri)
        done = first[-1]
        assert (done.stage, done.utterances, done.bytes_received) == ("done", 3, total)
        assert done.audio_seconds == pytest.approx(1.5, abs=0.01)
        assert client.upload_data(m, on_progress=again.append) == uri  # same content, same URI
    send = [p for p in again if p.stage == "send"][0]
    assert (send.bytes_present, send.bytes_to_send, send.files_to_send) == (total, 0, 0)
    assert again[-1].bytes_received == 0


def test_real_interrupted_upload_resumes(tmp_path, real_server):
    m = make_corpus(tmp_path, n=2, seconds=1.0)
    wav = tmp_path / "audio" / "u1.wav"
    data = wav.read_bytes()
    h, half = sha(wav), len(data) // 2
    stop = threading.Event()

    def interrupted():
        yield pb.UploadDataRequest(blob=pb.BlobChunk(sha256=h, total_size=len(data), offset=0, data=data[:half]))
        stop.wait(30)  # the connection "drops" here: the call is cancelled

    def held() -> int:
        resp = stub.CheckUpload(pb.CheckUploadRequest(sha256=[h]), timeout=10)
        return resp.blobs[0].bytes_present if resp.blobs else 0

    with grpc.insecure_channel(real_server.address) as ch:
        stub = pb_grpc.AdaptationStub(ch)
        try:
            held()
        except grpc.RpcError as e:
            _unimplemented(SpeechAdaptError.from_rpc(e), "CheckUpload")
            raise
        call = stub.UploadData.future(interrupted(), timeout=60)
        try:
            for _ in range(100):  # the server keeps what arrived (written as it comes, or on cancel)
                if held() == half:
                    break
                threading.Event().wait(0.05)
        finally:
            call.cancel()
            stop.set()
        for _ in range(100):
            if held() == half:
                break
            threading.Event().wait(0.05)
        assert held() == half, "the server did not keep the first half of an interrupted upload"
    seen: list[UploadProgress] = []
    with SpeechClient(real_server.address, timeout=60) as client:
        uri = client.upload_data(m, on_progress=seen.append)
    other = (tmp_path / "audio" / "u0.wav").stat().st_size
    send = [p for p in seen if p.stage == "send"][0]
    assert send.bytes_present == half and send.bytes_to_send == len(data) - half + other
    assert seen[-1].bytes_received == len(data) - half + other and seen[-1].utterances == 2
    assert uri.startswith("data://")


def test_real_server_rejects_invalid_specs(tmp_path, real_server):
    bad = pb.JobSpec(name="a b", base_model="tiny@0", train_manifest="/nowhere/t.jsonl",
                     dev_manifest="/nowhere/d.jsonl", max_epochs=0)
    with SpeechClient(real_server.address, timeout=60) as client:
        try:
            client.submit_job(bad)
        except SpeechAdaptError as e:
            _unimplemented(e, "SubmitJob")
            err = e
        else:
            pytest.fail("the server accepted an invalid spec")
        assert err.code == "INVALID_ARGUMENT"
        for what in ("name 'a b'", "base_model 'tiny@0'", "max_epochs 0"):
            assert what in err.message
        with pytest.raises(SpeechAdaptError) as nf:
            client.get_job("no-such-job")
        assert nf.value.code == "NOT_FOUND"
        # with upload, an unknown base model is found before any data goes up
        m = make_corpus(tmp_path / "data", n=1, seconds=0.37)  # audio no other test uploads
        with pytest.raises(SpeechAdaptError) as e:
            client.submit_job({"name": "acc", "base_model": "no-such-model", "train_manifest": str(m),
                               "dev_manifest": str(m)}, upload=True)
        assert e.value.code == "NOT_FOUND" and e.value.message.startswith("base_model: ")
        with grpc.insecure_channel(real_server.address) as ch:
            held = pb_grpc.AdaptationStub(ch).CheckUpload(pb.CheckUploadRequest(sha256=[sha(tmp_path / "data" / "audio" / "u0.wav")]))
        assert held.blobs[0].bytes_present == 0
    # valid as YAML, not for this server: no such base model, no such uploaded data
    spec = write_spec(tmp_path, base_model="no-such-model", train_manifest="data://" + "0" * 64,
                      dev_manifest="data://" + "1" * 64)
    r = run_cli("jobs", "submit", str(spec), "--server", real_server.address, "--wait")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.startswith("error: the server rejected it (")
    assert "no-such-model" in r.stderr
    r = run_cli("jobs", "list", "--server", real_server.address, "--json")
    assert r.returncode == 0 and r.stdout == ""
