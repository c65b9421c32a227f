"""The client side of adaptation jobs: types, uploads, job calls and the `speechadapt jobs` CLI.

Two layers:
- no network: proto <-> dataclass conversion, progress and summary lines, manifest and spec checks,
  CLI parsing, and the local errors that must come before any connection;
- the real server (speechadapt.server on loopback, conftest's ServerThread): uploads (only the missing
  bytes, resume, continuing past the server's per-call limit), server-side spec and data checks, and real
  adaptation jobs on the local Ray head the server starts. To keep the time down the module runs two jobs:
  ONE small job (tiny@1, tiny's own audio, a `search:` of two one-epoch head trials) submitted with
  `speechadapt jobs submit --upload --wait --json`, whose finished record, events and report serve every
  list/get/watch/report/summary test; and one more that is waited on with timeouts shorter than the job and
  cancelled via the CLI right after it starts running. What the tests expect is read off the server itself
  (GetJob, WatchJob, GetJobReport on a raw stub), so they hold whether or not the job's model was promoted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

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
from speechadapt.jobspec import SearchSpec
from speechadapt.v1 import adaptation_pb2 as pb
from speechadapt.v1 import adaptation_pb2_grpc as pb_grpc

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


# -- the real server (speechadapt.server on loopback)


def _unimplemented(e: SpeechAdaptError, rpc: str) -> None:
    """Skip (only) while the server answers UNIMPLEMENTED: the Adaptation service is being written."""
    if e.code == "UNIMPLEMENTED":
        pytest.skip(f"the server does not implement Adaptation.{rpc} yet ({e.message})")


@pytest.fixture(scope="module")
def real_server(tiny, tmp_path_factory):
    """A real SpeechServer with a copy of tiny@1 in its store (jobs publish into it) and its own state dir. The
    first job starts a local Ray head (2 CPUs), which stops with the server."""
    pytest.importorskip("torch", reason="the real server needs the server extra")
    from conftest import ServerThread

    root = tmp_path_factory.mktemp("adaptation-server")
    shutil.copytree(tiny.store / "tiny", root / "store" / "tiny", ignore=shutil.ignore_patterns(".*"))
    srv = ServerThread(model_store=root / "store", state_dir=root / "state", ray_num_cpus=2, default_model="tiny")
    srv.store_dir = root / "store"
    yield srv
    srv.stop()


def blob_chunk(data: bytes, start: int, end: int) -> pb.UploadDataRequest:
    return pb.UploadDataRequest(blob=pb.BlobChunk(sha256=hashlib.sha256(data).hexdigest(), total_size=len(data),
                                                  offset=start, data=data[start:end]))


def held_bytes(address: str, paths: list[Path]) -> list[tuple[int, bool]]:
    """(bytes present, complete) of each file's blob on the server (CheckUpload)."""
    with grpc.insecure_channel(address) as ch:
        resp = pb_grpc.AdaptationStub(ch).CheckUpload(pb.CheckUploadRequest(sha256=[sha(p) for p in paths]), timeout=30)
    return [(b.bytes_present, b.complete) for b in resp.blobs]


def stored_manifest(srv, uri: str):
    """The utterances of an uploaded manifest as the server resolves data://<sha256> for its workers."""
    from speechadapt.asr.manifest import read_manifest

    return read_manifest(srv.server.jobs.data.resolve(uri))


def test_upload_sends_only_missing_bytes(tmp_path, make_server):
    srv = make_server(state_dir=tmp_path / "state")
    m = make_corpus(tmp_path / "c", n=3)
    wavs = [tmp_path / "c" / "audio" / f"u{i}.wav" for i in range(3)]
    size = wavs[0].stat().st_size
    # the server holds u0 and the first 3000 bytes of u1: an earlier upload that stopped there
    a, b = wavs[0].read_bytes(), wavs[1].read_bytes()
    with grpc.insecure_channel(srv.address) as ch:
        pb_grpc.AdaptationStub(ch).UploadData(iter([blob_chunk(a, 0, len(a)), blob_chunk(b, 0, 3000)]), timeout=30)
    assert held_bytes(srv.address, wavs) == [(size, True), (3000, False), (0, False)]
    seen: list[UploadProgress] = []
    with SpeechClient(srv.address, timeout=30) as client:
        uri = client.upload_data(m, chunk_bytes=2048, on_progress=seen.append)
    send = [p for p in seen if p.stage == "send"]
    assert (send[0].bytes_present, send[0].bytes_to_send, send[0].files_to_send) == (size + 3000, 2 * size - 3000, 2)
    done = seen[-1]
    assert done.stage == "done" and done.manifest_uri == uri and done.utterances == 3
    # the server counted exactly the missing bytes: nothing it held was sent again
    assert done.bytes_received == done.bytes_sent == 2 * size - 3000
    # every file whole on the server (verified against its sha256), the manifest naming them by content
    assert held_bytes(srv.address, wavs) == [(size, True)] * 3
    utts = stored_manifest(srv, uri)
    assert [u.audio.read_bytes() for u in utts] == [w.read_bytes() for w in wavs]
    assert [(u.text, u.speaker) for u in utts] == [("utterance 0", "s0"), ("utterance 1", "s1"), ("utterance 2", "s0")]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_upload_continues_in_new_calls_past_a_per_call_limit(tmp_path, make_server, asynchronous):
    m = make_corpus(tmp_path / "c", n=3, seconds=1.0)
    wavs = [tmp_path / "c" / "audio" / f"u{i}.wav" for i in range(3)]
    sizes = [w.stat().st_size for w in wavs]
    assert sizes == [32044] * 3  # 1 s of 16-bit audio and a 44-byte header: the arithmetic below

    def upload(address: str, seen: list) -> str:
        if asynchronous:
            async def go():
                async with AsyncSpeechClient(address, timeout=30) as client:
                    return await client.upload_data(m, chunk_bytes=4096, on_progress=seen.append)
            return asyncio.run(go())
        with SpeechClient(address, timeout=30) as client:
            return client.upload_data(m, chunk_bytes=4096, on_progress=seen.append)

    srv = make_server(state_dir=tmp_path / "state", max_upload_bytes=20000)
    seen: list[UploadProgress] = []
    uri = upload(srv.address, seen)
    assert uri.startswith("data://")
    # 96 kB in 4 kB chunks, 20 kB a call: the server keeps the chunks within its limit and refuses the call at the
    # chunk past it; the client asks what it holds and goes on from there in a new call. One "send" report with
    # nothing sent yet per call: what the server held then, and what was left to send.
    calls = [p for p in seen if p.stage == "send" and p.bytes_sent == 0]
    assert [p.bytes_present for p in calls] == [0, 16384, 36140, 52524, 72280, 88664]
    assert all(p.bytes_present + p.bytes_to_send == sum(sizes) for p in calls)  # held bytes are never sent again
    done = seen[-1]
    assert done.stage == "done" and done.utterances == 3 and done.bytes_received == sum(sizes) - 88664
    assert held_bytes(srv.address, wavs) == [(s, True) for s in sizes]
    assert [u.audio.read_bytes() for u in stored_manifest(srv, uri)] == [w.read_bytes() for w in wavs]

    tight = make_server(state_dir=tmp_path / "state-tight", max_upload_bytes=100)
    for _ in range(20):  # the refusal races the client's next write: grpc.aio can lose the status (see lost_status)
        with pytest.raises(SpeechAdaptError) as e:  # less than a chunk: no call adds anything, the error is the caller's
            upload(tight.address, [])
        assert e.value.code == "RESOURCE_EXHAUSTED" and "limit of 100 bytes per UploadData call" in e.value.message
    assert held_bytes(tight.address, wavs) == [(0, False)] * 3


def write_spec(folder: Path, **keys) -> Path:
    data = {"name": "acc", "base_model": "tiny@1", "train_manifest": "/w/train.jsonl", "dev_manifest": "/w/dev.jsonl"}
    data.update(keys)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_server_rejection_lists_problems_exit_2(tmp_path, real_server):
    # valid as YAML and for the base model; the server holds no such data: every problem on its own line, exit 2
    t, d = "data://" + "0" * 64, "data://" + "1" * 64
    r = run_cli("jobs", "submit", str(write_spec(tmp_path, train_manifest=t, dev_manifest=d)), "--server",
                real_server.address, "--wait")
    assert r.returncode == 2 and r.stdout == ""
    fix = "not in this server's data store; upload the data with UploadData and use the manifest_uri it returns"
    assert r.stderr.splitlines() == ["error: the job's data has problems (INVALID_ARGUMENT):",
                                     f"  - train_manifest {t}: {fix}", f"  - dev_manifest {d}: {fix}"]
    # with --upload, an unknown base model is refused before any audio goes up
    m = make_corpus(tmp_path / "data", n=2, seconds=0.45)  # audio no other test uploads
    spec = write_spec(tmp_path / "other", base_model="nope", train_manifest=str(m), dev_manifest=str(m))
    r = run_cli("jobs", "submit", str(spec), "--upload", "--server", real_server.address)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == "error: the server rejected it (NOT_FOUND):" and len(lines) == 2, r.stderr
    assert re.fullmatch(r"  - base_model: model 'nope' not found \(available: (.+, )?tiny(, .+)?\)", lines[1]), lines[1]
    assert held_bytes(real_server.address, [m.parent / "audio" / f"u{i}.wav" for i in range(2)]) == [(0, False)] * 2


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
        jobs_before = [j.id for j in client.list_jobs()]
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
    assert r.returncode == 0 and [json.loads(x)["id"] for x in r.stdout.splitlines()] == jobs_before  # none added


# -- real adaptation jobs on the server's local Ray head (slow): one that finishes, one that is cancelled

JOB_KEYS = {"base_model": "tiny@1", "train_manifest": "data/train.jsonl", "dev_manifest": "data/dev.jsonl",
            "source_dev_manifest": "data/source_dev.jsonl", "strategy": "head", "max_epochs": 1,
            "max_minutes": 2.0, "batch_size": 16, "augment": False, "seed": 0}
SEARCH = {"trials": 2, "strategies": ["head"]}
DOMAIN_TEXT = "go stop\nyes no up down\nleft right go\n"
MANIFESTS = (("train_manifest", "train.jsonl"), ("dev_manifest", "dev.jsonl"), ("source_dev_manifest", "source_dev.jsonl"))


def _tiny_lines(manifest: Path) -> list[dict]:
    lines = []
    for line in manifest.read_text().splitlines():
        d = json.loads(line)
        d["audio"] = str((manifest.parent / d["audio"]).resolve())
        lines.append(d)
    return lines


@pytest.fixture(scope="module")
def job_folder(tiny, tmp_path_factory) -> Path:
    """Target data for the jobs, from tiny's own corpus: train (just over the server's minimum of 30 s), 5 dev and
    5 source dev utterances, in manifests under data/ naming the audio by absolute path."""
    folder = tmp_path_factory.mktemp("job")
    train, seconds = [], 0.0
    for d in _tiny_lines(tiny.train_manifest):
        if seconds >= 32.0 and len(train) >= 10:
            break
        train.append(d)
        seconds += sf.info(d["audio"]).duration
    dev = _tiny_lines(tiny.dev_manifest)
    (folder / "data").mkdir()
    for name, lines in (("train.jsonl", train), ("dev.jsonl", dev[:5]), ("source_dev.jsonl", dev[5:10])):
        (folder / "data" / name).write_text("".join(json.dumps(d) + "\n" for d in lines))
    return folder


def _server_view(address: str, job_id: str) -> SimpleNamespace:
    """The job as the server gives it on a raw stub: its Job message, every event, the report (None if none)."""
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.AdaptationStub(ch)
        msg = stub.GetJob(pb.GetJobRequest(id=job_id), timeout=30)
        events = list(stub.WatchJob(pb.WatchJobRequest(id=job_id), timeout=30))
        try:
            report = stub.GetJobReport(pb.GetJobRequest(id=job_id), timeout=30)
        except grpc.RpcError:
            report = None
    return SimpleNamespace(id=job_id, proto=msg, events=events, report=report)


def _cli_failed(what: str, r: subprocess.CompletedProcess) -> None:
    pytest.fail(f"{what}: exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-6000:]}")


@pytest.fixture(scope="module")
def finished_job(real_server, job_folder):
    """THE real job of this module, submitted as users do: `speechadapt jobs submit job.yaml --upload --wait --json`
    (three local manifests uploaded, then progress until the job ends). A search (`search:` in the job file: two
    head trials at two learning rates, side by side on the server's Ray head) on the smallest budget: tiny@1, one
    epoch of tiny's first ~30 s of training audio (2 steps a trial), 5 + 5 dev utterances to evaluate on."""
    pytest.importorskip("ray", reason="adaptation jobs need the training extra (ray)")
    spec = job_folder / "job.yaml"
    (job_folder / "domain.txt").write_text(DOMAIN_TEXT)  # the job's domain_text: sent as text, a word LM for the candidate
    spec.write_text(yaml.safe_dump({"name": "tiny-cli", **JOB_KEYS, "search": SEARCH, "domain_text": "domain.txt"}))
    r = run_cli("jobs", "submit", str(spec), "--upload", "--server", real_server.address, "--wait", "--json",
                timeout=840)
    try:
        job_id = json.loads(r.stdout)["id"]
    except (ValueError, KeyError, TypeError):
        _cli_failed("the job's submit --wait --json printed no job record", r)
    return SimpleNamespace(cli=r, folder=job_folder, **vars(_server_view(real_server.address, job_id)))


@pytest.fixture(scope="module")
def cancelled_job(real_server, finished_job):
    """The module's second (and last) real job: the same data (so its upload sends nothing), submitted without
    --wait; waited on with timeouts shorter than the job (the sync and the asyncio client); cancelled with
    `speechadapt jobs cancel` right after it starts running; then watched and cancelled again."""
    address = real_server.address
    spec = finished_job.folder / "cancel.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny-cli-cancel", **JOB_KEYS, "max_epochs": 30}))
    submit = run_cli("jobs", "submit", str(spec), "--upload", "--server", address)
    if submit.returncode != 0:
        _cli_failed("submitting the job to cancel", submit)
    job_id = submit.stdout.splitlines()[-1]

    def outcome(fn):
        try:
            return fn()
        except SpeechAdaptError as e:
            return e

    async def wait_briefly():
        async with AsyncSpeechClient(address, timeout=60) as client:
            return await client.wait_job(job_id, timeout=0.5)

    with SpeechClient(address, timeout=60) as client:
        sync_wait = outcome(lambda: client.wait_job(job_id, timeout=0.5))
        async_wait = outcome(lambda: asyncio.run(wait_briefly()))
        deadline = time.monotonic() + 300
        while client.get_job(job_id).state == "QUEUED" and time.monotonic() < deadline:
            time.sleep(0.2)
        running = client.get_job(job_id)
    cancel = run_cli("jobs", "cancel", job_id, "--server", address)
    watch = run_cli("jobs", "watch", job_id, "--server", address)
    again = run_cli("jobs", "cancel", job_id, "--server", address)
    return SimpleNamespace(submit=submit, sync_wait=sync_wait, async_wait=async_wait, running=running, cancel=cancel,
                           watch=watch, again=again, **vars(_server_view(address, job_id)))


def expected_record(msg: pb.Job) -> dict:
    """The CLI's job record, read straight off the server's Job message (a job that ran measured every WER)."""
    return {"id": msg.id, "state": pb.JobState.Name(msg.state), "promoted": msg.promoted, "reason": msg.reason,
            "model": msg.model, "version": msg.version, "metrics": {k: getattr(msg.metrics, k) for k in WER_KEYS}}


def shown_lines(events: list[pb.JobEvent]) -> list[str]:
    """The progress lines of a job's events as a non-TTY shows them (a line equal to the one before is not repeated)."""
    lines = [J.progress_line(JobEvent.from_proto(e)) for e in events]
    return [x for i, x in enumerate(lines) if i == 0 or x != lines[i - 1]]


def uploaded(folder: Path, name: str) -> SimpleNamespace:
    """What an upload of a job manifest covers: utterances, audio files and their bytes (hashed), distinct
    contents (blobs) and their bytes (sent, or found on the server)."""
    lines = [json.loads(x) for x in (folder / "data" / name).read_text().splitlines()]
    files = {Path(d["audio"]) for d in lines}
    blobs = {sha(f): f.stat().st_size for f in files}
    return SimpleNamespace(utterances=len(lines), files=len(files), file_bytes=sum(f.stat().st_size for f in files),
                           blobs=len(blobs), blob_bytes=sum(blobs.values()))


@pytest.mark.slow
def test_cli_submit_wait_json_is_exactly_the_record(real_server, finished_job):
    f = finished_job
    r = f.cli
    assert r.returncode == 0, r.stderr[-6000:]  # SUCCEEDED, promoted or not
    assert r.stdout.count("\n") == 1
    rec = json.loads(r.stdout)
    assert set(rec) == RECORD_KEYS and set(rec["metrics"]) == WER_KEYS
    assert rec == expected_record(f.proto)  # exactly the server's final record
    assert rec["state"] == "SUCCEEDED" and all(w >= 0 for w in rec["metrics"].values()), rec
    if rec["promoted"]:
        assert (rec["model"], rec["version"]) == ("tiny-cli", 1)
        assert (real_server.store_dir / "tiny-cli" / "1" / "model.json").is_file()
    else:
        assert (rec["model"], rec["version"]) == ("", 0)
        assert rec["reason"].startswith(("negative transfer:", "forgetting:")), rec["reason"]
    # stderr (not a TTY): each manifest's upload (hash, send, done: its data:// URI is what the job got), the
    # submitted job, then one line per progress event, the last saying how it ended
    lines = r.stderr.splitlines()
    for i, (key, name) in enumerate(MANIFESTS):
        up, uri = uploaded(f.folder, name), getattr(f.proto.spec, key)
        assert re.fullmatch(r"data://[0-9a-f]{64}", uri)
        assert lines[3 * i] == f"upload {name}: hashing audio files 0/{up.files} ({J.format_bytes(up.file_bytes)})"
        assert lines[3 * i + 1] == f"upload {name}: sent 0 B of {J.format_bytes(up.blob_bytes)} (0/{up.blobs} files)"
        assert re.fullmatch(rf"uploaded {re.escape(name)}: {up.utterances} utterances, [0-9ms]+ of audio, "
                            rf"{re.escape(J.format_bytes(up.blob_bytes))} sent -> {uri}", lines[3 * i + 2]), lines[3 * i + 2]
    assert lines[9] == f"job {f.id} QUEUED"
    assert lines[10:] == shown_lines(f.events)
    assert lines[-1] == f"SUCCEEDED  {rec['reason']}"
    phases = [p for p in dict.fromkeys(e.phase for e in f.events)
              if p in ("queued", "validate", "baseline", "train", "evaluate", "result", "done")]
    assert phases == ["queued", "validate", "baseline", "train", "evaluate", "result", "done"]
    assert any(re.match(r"train  step \d+/\d+  loss \d", x) for x in lines[10:])  # a measured training loss
    # domain_text went as text: the record names it by sha256 and line count, never echoes it; the job built its LM
    spec = f.proto.spec
    assert (spec.domain_text, spec.domain_text_sha256, spec.domain_text_lines) == \
        ("", hashlib.sha256(DOMAIN_TEXT.encode()).hexdigest(), 3)
    assert f.proto.metrics.domain_lm_weight == 1.0 and f.proto.metrics.HasField("base_target_wer_domain_lm")
    assert json.loads(f.report.metrics_json)["domain_lm"]["mode"] == "domain only"


@pytest.mark.slow
def test_cli_watch_shows_the_summary_and_exits_0(real_server, finished_job):
    f = finished_job
    r = run_cli("jobs", "watch", f.id, "--server", real_server.address)
    assert r.returncode == 0, r.stderr  # SUCCEEDED, promoted or not
    job = Job.from_proto(f.proto)
    shown = shown_lines(f.events)
    assert r.stdout.splitlines() == shown + J.summary_lines(job)
    summary = r.stdout.splitlines()[len(shown):]
    m, took = f.proto.metrics, (f.proto.end_time.ToNanoseconds() - f.proto.start_time.ToNanoseconds()) / 1e9
    assert summary[0] == f"job {f.id} SUCCEEDED in {J.format_duration(took)}"
    assert summary[1].split() == ["base", "adapted"]
    assert summary[2].split() == ["target", "WER", f"{100 * m.base_target_wer:.1f}%", f"{100 * m.adapted_target_wer:.1f}%",
                                  f"{100 * (m.adapted_target_wer - m.base_target_wer):+.1f}", "points"]
    assert summary[3].split()[:2] == ["source", "WER"]
    # the job file's domain_text: the LM built from it, and the base decoded with it
    assert m.domain_lm_weight == 1  # tiny has no LM: the domain LM alone
    assert summary[4] == (f"  domain LM: the base has none, target dev perplexity "
                          f"{m.domain_lm_dev_perplexity:.1f}; base target WER with it {100 * m.base_target_wer_domain_lm:.1f}%")
    assert summary[5] == (f"promoted: tiny-cli@{f.proto.version} ({f.proto.reason})" if f.proto.promoted
                          else f"not promoted: {f.proto.reason}")
    assert len(summary) == 6


@pytest.mark.slow
def test_cli_progress_is_one_rewritten_line_on_a_tty(real_server, finished_job):
    import os
    import pty
    import select

    f = finished_job
    master, slave = pty.openpty()
    proc = subprocess.Popen([PY, "-m", "speechadapt.client.cli", "jobs", "watch", f.id, "--server", real_server.address],
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
    # every event rewrites the one line (cut to the terminal's width less one)
    assert progress.startswith("\rqueued  job queued")
    assert [x.rstrip() for x in progress.split("\r")[1:]] == \
        [J.progress_line(JobEvent.from_proto(e))[:199].rstrip() for e in f.events]
    assert summary.splitlines() == J.summary_lines(Job.from_proto(f.proto))
    assert summary.startswith(f"job {f.id} SUCCEEDED in ")


@pytest.mark.slow
def test_cli_list_get_report_and_watch_json(tmp_path, real_server, finished_job, cancelled_job):
    address, f, c = real_server.address, finished_job, cancelled_job
    r = run_cli("jobs", "list", "--server", address, "--state", "succeeded,failed", "--state", "CANCELLED")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["ID", "STATE", "NAME", "BASE", "CREATED", "PROGRESS/RESULT"]
    assert [x.split()[:4] for x in rows[1:]] == [[c.id, "CANCELLED", "tiny-cli-cancel", "tiny@1"],  # newest first
                                                [f.id, "SUCCEEDED", "tiny-cli", "tiny@1"]]
    m = f.proto.metrics
    assert rows[2].endswith(f"target WER {100 * m.base_target_wer:.1f}% -> {100 * m.adapted_target_wer:.1f}%, "
                            + (f"promoted tiny-cli@{f.proto.version}" if f.proto.promoted else "not promoted"))
    r = run_cli("jobs", "list", "--server", address, "--state", "queued,running")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "no jobs\n")
    r = run_cli("jobs", "list", "--server", address, "--json")
    listed = [json.loads(x) for x in r.stdout.splitlines()]
    assert [d["id"] for d in listed] == [c.id, f.id]
    plain = {k: v for k, v in expected_record(f.proto).items() if k != "metrics"}  # to_dict() has every metric
    assert {k: listed[1][k] for k in plain} == plain

    r = run_cli("jobs", "get", f.id, "--server", address)
    assert r.returncode == 0, r.stderr
    details = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.stdout.splitlines())
    assert (details["id"], details["state"], details["name"], details["base model"], details["strategy"]) == \
        (f.id, "SUCCEEDED", "tiny-cli", "tiny@1", "head")
    assert details["promoted"] == (f"yes: tiny-cli@{f.proto.version}" if f.proto.promoted else "no")
    assert details["train manifest"] == f.proto.spec.train_manifest and details["ray job"] == f"{f.id}-1"
    r = run_cli("jobs", "get", f.id, "--server", address, "--json")
    d = json.loads(r.stdout)
    assert RECORD_KEYS <= set(d) and {k: d[k] for k in plain} == plain
    assert d["spec"]["train_manifest"] == f.proto.spec.train_manifest and d["spec"]["max_epochs"] == 1
    r = run_cli("jobs", "get", "missing-1", "--server", address)
    assert r.returncode == 1 and r.stderr.startswith("error: NOT_FOUND: no job 'missing-1'")

    out = tmp_path / "rep"
    r = run_cli("jobs", "report", f.id, "--out", str(out), "--server", address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out / 'metrics.json'}, {out / 'training.png'}, {out / 'search.png'}"
    assert (out / "metrics.json").read_bytes() == f.report.metrics_json
    assert (out / "training.png").read_bytes() == f.report.plot_png and f.report.plot_png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "search.png").read_bytes() == f.report.search_png and f.report.search_png.startswith(b"\x89PNG\r\n\x1a\n")
    report = json.loads(f.report.metrics_json)
    assert report["job_id"] == f.id and report["metrics"]["adapted_target_wer"] == m.adapted_target_wer
    # the search through the server: both trials in the report, the job's record from the best
    trials = report["search"]["trials"]
    assert [(t["strategy"], t["status"]) for t in trials] == [("head", "done"), ("head", "done")], trials
    assert trials[0]["lr"] == pytest.approx(3 * trials[1]["lr"], rel=0.01)
    assert JobSpec.from_proto(f.proto.spec).search == SearchSpec(trials=2, strategies=["head"])

    r = run_cli("jobs", "watch", f.id, "--server", address, "--json")
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and events == [JobEvent.from_proto(e).to_dict() for e in f.events]
    assert events[0]["time"].endswith("Z") and (events[-1]["state"], events[-1]["phase"]) == ("SUCCEEDED", "done")


@pytest.mark.slow
def test_sync_job_calls(tmp_path, real_server, finished_job, cancelled_job):
    f, c = finished_job, cancelled_job
    seen: list[JobEvent] = []
    with SpeechClient(real_server.address, timeout=60) as client:
        final = client.wait_job(f.id, timeout=60, on_event=seen.append)  # ended: its events, then its record
        got = client.get_job(f.id)
        all_jobs = client.list_jobs(page_size=1)  # one job a page
        metrics = client.get_job_report(f.id, tmp_path / "rep" / "j1")
        with pytest.raises(SpeechAdaptError) as bad:
            client.submit_job(pb.JobSpec(name="a b", base_model="tiny", train_manifest="/t", dev_manifest="/d"))
        with pytest.raises(SpeechAdaptError) as ended:
            client.cancel_job(f.id)
        with pytest.raises(SpeechAdaptError) as no_report:
            client.get_job_report(c.id, tmp_path / "rep" / "j2")
        with pytest.raises(SpeechAdaptError) as nf:
            client.get_job("missing-1")
        with pytest.raises(SpeechAdaptError) as w:
            list(client.watch_job("missing-2"))
    assert seen == [JobEvent.from_proto(e) for e in f.events]
    train = [e for e in seen if e.phase == "train" and e.step]
    assert train and all(0 < e.step <= e.total_steps for e in train) and any(e.loss > 0 for e in train)
    validate = [e.dev_wer for e in seen if e.phase == "validate"]
    assert validate and validate == [None] * len(validate)  # not measured there
    assert any(e.dev_wer is not None for e in seen if e.phase == "baseline")
    assert final == got == Job.from_proto(f.proto) and final.succeeded and final.record() == expected_record(f.proto)
    assert final.spec.name == "tiny-cli" and final.spec.strategy == "head" and final.spec.dev_manifest.startswith("data://")
    assert final.metrics.total_parameters > final.metrics.trained_parameters > 0
    assert final.duration > 0 and final.ray_job_id == f"{f.id}-1"
    assert [j.id for j in all_jobs] == [c.id, f.id]
    assert metrics == json.loads(f.report.metrics_json)
    assert (tmp_path / "rep" / "j1" / "training.png").read_bytes() == f.report.plot_png
    assert json.loads((tmp_path / "rep" / "j1" / "metrics.json").read_text()) == metrics
    assert bad.value.code == "INVALID_ARGUMENT" and "name 'a b'" in bad.value.message
    assert ended.value.code == "FAILED_PRECONDITION" and "already ended" in ended.value.message
    assert no_report.value.code == "FAILED_PRECONDITION" and "no report" in no_report.value.message
    assert nf.value.code == w.value.code == "NOT_FOUND"


@pytest.mark.slow
def test_async_upload_watch_wait_list_report_and_submit_with_upload(tmp_path, real_server, finished_job):
    f = finished_job
    train = f.folder / "data" / "train.jsonl"
    tones = make_corpus(tmp_path / "tones", n=3, seconds=0.55)  # not speech the server accepts as training data
    stages: list[UploadProgress] = []
    sent: list[UploadProgress] = []
    seen: list[JobEvent] = []

    async def on_event(ev):
        await asyncio.sleep(0)
        seen.append(ev)

    async def go():
        async with AsyncSpeechClient(real_server.address, timeout=60) as client:
            uri = await client.upload_data(train, on_progress=stages.append)
            events = [e async for e in client.watch_job(f.id)]
            final = await client.wait_job(f.id, on_event=on_event)
            listed = await client.list_jobs(["succeeded", "FAILED"])
            metrics = await client.get_job_report(f.id, tmp_path / "rep")
            with pytest.raises(SpeechAdaptError) as e:  # train = dev: one upload, its URI in both fields
                await client.submit_job({"name": "tones", "base_model": "tiny@1", "train_manifest": str(tones),
                                         "dev_manifest": str(tones)}, upload=True, on_upload_progress=sent.append)
            return uri, events, final, listed, metrics, e.value

    uri, events, final, listed, metrics, err = asyncio.run(go())
    # the job's train manifest: same content, same URI, and nothing sent (the server has held it since the job)
    assert uri == f.proto.spec.train_manifest
    assert stages[0].stage == "hash" and "send" in [p.stage for p in stages] and stages[-1].stage == "done"
    assert stages[-1].bytes_received == 0 and stages[-1].utterances == uploaded(f.folder, "train.jsonl").utterances
    assert events == seen == [JobEvent.from_proto(e) for e in f.events] and events[-1].ended
    assert final.record() == expected_record(f.proto) and final == Job.from_proto(f.proto)
    assert [j.id for j in listed] == [f.id]
    assert metrics == json.loads(f.report.metrics_json)
    # upload=True: the local manifest went up (once) before the server checked the spec, whose data problems
    # name it by the data:// URI the client put in both fields
    assert [p.stage for p in sent].count("done") == 1
    tones_uri = sent[-1].manifest_uri
    assert err.code == "INVALID_ARGUMENT" and err.message.startswith("the job's data has problems:")
    assert f"train_manifest {tones_uri}" in err.message and f"dev_manifest {tones_uri}" in err.message
    assert str(tmp_path) not in err.message


@pytest.mark.slow
def test_wait_timeout_then_cancel_right_after_it_starts_running(finished_job, cancelled_job):
    f, c = finished_job, cancelled_job
    # submitted without --wait (not a TTY): each manifest's upload, nothing to send (the first job's data), then the id
    assert c.submit.stderr == ""
    lines = c.submit.stdout.splitlines()
    assert len(lines) == 10 and lines[-1] == c.id and re.fullmatch(r"job-[0-9a-f]{12}", c.id)
    for i, (key, name) in enumerate(MANIFESTS):
        uri = getattr(f.proto.spec, key)
        assert getattr(c.proto.spec, key) == uri  # same content, same URI
        assert lines[3 * i].startswith(f"upload {name}: hashing audio files 0/")
        assert lines[3 * i + 1] == \
            f"upload {name}: nothing to send, all {J.format_bytes(uploaded(f.folder, name).blob_bytes)} already on the server"
        assert lines[3 * i + 2].startswith(f"uploaded {name}: ") and lines[3 * i + 2].endswith(f" 0 B sent -> {uri}")
    # waiting less long than the job takes: DEADLINE_EXCEEDED, and the job keeps running
    for err in (c.sync_wait, c.async_wait):
        assert isinstance(err, SpeechAdaptError), err
        assert err.code == "DEADLINE_EXCEEDED"
        assert str(err) == f"DEADLINE_EXCEEDED: job {c.id} did not end within 0.5 s; it keeps running: wait again, or cancel it"
    assert c.running.state == "RUNNING" and c.running.start_time is not None, c.running
    # cancelled right after it started running
    assert (c.cancel.returncode, c.cancel.stdout, c.cancel.stderr) == (0, f"job {c.id} CANCELLED\n", "")
    final = Job.from_proto(c.proto)
    assert (final.state, final.promoted, final.reason) == ("CANCELLED", False, "cancelled")
    assert c.events[-1].state == pb.CANCELLED and c.report is None
    # watching it: its events, then the summary; exit 1 (not SUCCEEDED)
    assert c.watch.returncode == 1, c.watch.stderr
    assert c.watch.stdout.splitlines() == shown_lines(c.events) + J.summary_lines(final)
    assert J.summary_lines(final) == [f"job {c.id} CANCELLED in {J.format_duration(final.duration)}", "reason: cancelled"]
    # cancelling it again: the server refuses, exit 1
    assert c.again.returncode == 1 and c.again.stdout == ""
    assert c.again.stderr.startswith(f"error: FAILED_PRECONDITION: job {c.id} already ended (CANCELLED)")
