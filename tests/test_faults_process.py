"""Process-level faults: kill -9 of the server during an upload and during a job, kill -9 of a Ray Train worker,
a crash of the Ray head, SIGTERM of a server whose jobs run on an external Ray cluster. Each test asserts that
the work ends as it should, the server keeps serving, and nothing stored is lost or half-written.

Real components throughout: `speechadapt serve` subprocesses on 127.0.0.1 (the tiny test model), the client
library, real signals, real Ray heads (the server's own, or one the test starts as the "external" cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

import grpc
import pytest
import soundfile as sf

from conftest import ServeProcess, wait_for
from speechadapt.client import SpeechClient
from speechadapt.client.types import SpeechAdaptError
from speechadapt.v1 import adaptation_pb2 as apb
from speechadapt.v1 import adaptation_pb2_grpc as apb_grpc

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the training extra)")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256)."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tiny, tmp_path) -> Path:
    """A copy of tiny's store, for a server (and its jobs) to serve and publish into."""
    dst = tmp_path / "store"
    shutil.copytree(tiny.store / "tiny", dst / "tiny", ignore=shutil.ignore_patterns(".*"))
    return dst


@pytest.fixture
def state(tmp_path):
    """The servers' state dir; a Ray head a server left running there is killed after the test."""
    path = tmp_path / "state"
    yield path
    head = _head(path)
    if head and f"--temp-dir={head['temp_dir']}" in _cmdline(head["pid"]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head["pid"], signal.SIGKILL)


def _serve(log: Path, store: Path, state: Path, *args, port: int = 0, data: tuple[Path, ...] = ()) -> ServeProcess:
    """A serve subprocess; its jobs may read the corpus folders that hold the manifests in `data` (--data-root)."""
    roots = [a for m in data for a in ("--data-root", Path(m).parent.parent)]
    return ServeProcess(log, "--model-store", store, "--state-dir", state, "--default-model", "tiny", *roots, *args,
                        port=port)


@pytest.fixture
def speech(clean_utterances, tmp_path) -> tuple[Path, str]:
    """A WAV file the tiny model gets right, and its text: to check that a server is serving."""
    samples, text = clean_utterances[0]
    path = tmp_path / "speech.wav"
    sf.write(path, samples, 16000)
    return path, text


def _recognizes(client: SpeechClient, speech: tuple[Path, str]) -> bool:
    path, text = speech
    return " ".join(r.transcript for r in client.recognize(path)) == text


# ---------------------------------------------------------------------------------------------------------
# kill -9 of the server during an upload


def test_kill_9_during_an_upload_then_the_upload_resumes_and_nothing_stored_is_lost(tiny, store, state, tmp_path,
                                                                                   speech):
    chunk = 8192
    lines = [json.loads(line) for line in tiny.dev_manifest.read_text().splitlines()[:6]]
    files = [tiny.dev_manifest.parent / d["audio"] for d in lines]
    shas, sizes = [_sha(f) for f in files], [f.stat().st_size for f in files]
    assert len(set(shas)) == len(files) and sizes[2] > 3 * chunk
    manifest = tmp_path / "upload.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(f), "text": d["text"]}) + "\n" for f, d in zip(files, lines)))
    before = _tree(store)
    blobs = state / "data" / "blobs"
    part = blobs / shas[2][:2] / f"{shas[2]}.part"
    killed = threading.Event()

    with _serve(tmp_path / "serve1.log", store, state) as srv:
        def kill_mid_upload(p) -> None:
            """Called before each chunk goes out: with two whole files sent and the third's second chunk next,
            kill -9 the server once it has stored part of the third."""
            if p.stage != "send" or killed.is_set() or p.bytes_sent < sizes[0] + sizes[1] + 2 * chunk:
                return
            wait_for(lambda: part.is_file() and part.stat().st_size >= chunk, what="a partial blob on the server")
            killed.set()  # first: the upload fails (in the main thread) as soon as the server is gone
            srv.kill()

        with SpeechClient(srv.address, timeout=60) as c, pytest.raises(SpeechAdaptError) as cut:
            c.upload_data(manifest, chunk_bytes=chunk, on_progress=kill_mid_upload)
    assert killed.is_set() and cut.value.code == "UNAVAILABLE", cut.value

    with _serve(tmp_path / "serve2.log", store, state) as srv, grpc.insecure_channel(srv.address) as ch:
        held = {b.sha256: b for b in apb_grpc.AdaptationStub(ch).CheckUpload(apb.CheckUploadRequest(sha256=shas)).blobs}
        assert held[shas[0]].complete and held[shas[1]].complete
        partial = held[shas[2]].bytes_present
        assert chunk <= partial < sizes[2] and not held[shas[2]].complete
        assert all(held[s].bytes_present == 0 for s in shas[3:])
        progress = []
        with SpeechClient(srv.address, timeout=60) as c:
            uri = c.upload_data(manifest, chunk_bytes=chunk, on_progress=progress.append)
            assert _recognizes(c, speech)
        # it resumed: only what the server did not hold was sent
        send = next(p for p in progress if p.stage == "send")
        present = sizes[0] + sizes[1] + partial
        assert (send.bytes_present, send.bytes_to_send, send.files_to_send) == (present, sum(sizes) - present, 4)
        assert progress[-1].stage == "done" and progress[-1].utterances == 6
        assert progress[-1].bytes_received == sum(sizes) - present
    # every blob whole and named by its content, no partial file left, the manifest complete; the store untouched
    assert not list(blobs.rglob("*.part")) and all(_sha(blobs / s[:2] / s) == s for s in shas)
    resolved = state / "data" / "manifests" / f"{uri.removeprefix('data://')}.resolved.jsonl"
    assert [json.loads(line)["audio"] for line in resolved.read_text().splitlines()] == [
        str((blobs / s[:2] / s).absolute()) for s in shas]
    assert _tree(store) == before


# ---------------------------------------------------------------------------------------------------------
# Jobs: a killed training worker, kill -9 of the server, a crashed Ray head, SIGTERM with an external cluster


def _spec(tiny, scot, name: str, epochs: int) -> dict:
    """A cheap job (the output layer only; 10 steps, a dev evaluation and a checkpoint per epoch)."""
    return {"name": name, "base_model": "tiny", "train_manifest": str(scot["train"]), "dev_manifest": str(scot["dev"]),
            "source_dev_manifest": str(tiny.dev_manifest), "strategy": "head", "max_epochs": epochs, "max_minutes": 5,
            "batch_size": 8, "workers": 1, "seed": 0, "source_replay": 0.0, "max_source_regression": 1.0}


def _head(state: Path) -> dict | None:
    """The owned local Ray head a server recorded in `state` ({"pid", "dashboard_url", "temp_dir"}), or None."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((state / "ray" / "head.json").read_text())
    return None


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def _alive(pid: int) -> bool:
    return bool(_cmdline(pid))


def _events(state: Path, job_id: str) -> list[dict]:
    from speechadapt.server.jobs import JobStore

    store = JobStore(state / "jobs.sqlite")
    try:
        job = store.get(job_id)
        assert not job.terminal or job.state == "SUCCEEDED", f"the job ended {job.state}: {job.reason}"
        return [e for _, e in store.events(job_id)]
    finally:
        store.close()


def _said(state: Path, job_id: str, text: str) -> bool:
    return any(text in str(e.get("message", "")) for e in _events(state, job_id))


def _checkpointed(state: Path, job_id: str) -> bool:
    """Whether Ray Train has registered a checkpoint of the job (it then resumes from there, not from scratch)."""
    _events(state, job_id)  # fails at once when the job ended badly
    snapshot = state / "runs" / job_id / "train" / "checkpoint_manager_snapshot.json"
    return snapshot.is_file() and "checkpoint-" in snapshot.read_text(errors="replace")


def _train_worker_pid(dashboard_url: str) -> int:
    """The pid of the live Ray Train worker, from Ray's state API (0 while there is none)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         raise_on_missing_output=False)
    return next((a.pid for a in actors if a.pid), 0)


def _check_store(store: Path, before: dict[str, str], job) -> None:
    """tiny's files as they were before (`before`: its `_tree`); the job's new version (if it was promoted)
    complete; nothing half-written."""
    from speechadapt.asr import load_model

    assert _tree(store / "tiny") == before
    names = sorted(p.name for p in store.iterdir())
    if job.promoted:
        assert names == ["tiny", job.model] and sorted(p.name for p in (store / job.model).iterdir()) == [str(job.version)]
        assert load_model(job.model_ref, store=store).name  # every file checked against the card's sha256
    else:
        assert names == ["tiny"], job.reason


@pytest.mark.slow
@needs_ray
def test_a_killed_training_worker_and_a_kill_9_of_the_server_do_not_stop_the_job(tiny, scot, store, state, tmp_path,
                                                                                  speech):
    """One job through two faults: its Ray Train worker is killed -9 after the first checkpoint (FailureConfig
    restarts it from there), then the server is killed -9 while it trains; the next server on the same state dir
    adopts the Ray head the first one left running and follows the same Ray job to the end."""
    before = _tree(store / "tiny")
    with _serve(tmp_path / "serve1.log", store, state, data=(scot["train"], tiny.dev_manifest)) as srv:
        with SpeechClient(srv.address, timeout=60) as c:
            job = c.submit_job(_spec(tiny, scot, "tiny-scot", epochs=8))
        wait_for(lambda: _checkpointed(state, job.id), timeout=300, every=0.5, what="the job's first checkpoint")
        head = _head(state)
        worker = wait_for(lambda: _train_worker_pid(head["dashboard_url"]), timeout=60, what="the training worker")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: _said(state, job.id, "resumed from the checkpoint at step"), timeout=180, every=0.5,
                 what="Ray Train to restart the worker from the checkpoint")
        assert "result" not in [e.get("phase") for e in _events(state, job.id)]  # killed while the job runs
        srv.kill()
    assert _alive(head["pid"])  # the server's Ray head runs on in its own session, and the job with it

    with _serve(tmp_path / "serve2.log", store, state, data=(scot["train"], tiny.dev_manifest)) as srv:
        with SpeechClient(srv.address, timeout=60) as c:
            done = c.wait_job(job.id, timeout=300)
            assert done.state == "SUCCEEDED", done.reason
            assert done.ray_job_id == f"{job.id}-1"  # the same Ray job, followed again: not submitted twice
            assert _recognizes(c, speech)
        srv.signal(signal.SIGTERM)
        assert srv.wait(timeout=120) == 0
    assert f"adopting the Ray head left running by an earlier server (pid {head['pid']}" in srv.log_text()
    assert not _alive(head["pid"])  # stopped by the server that adopted it
    messages = [str(e.get("message", "")) for e in _events(state, job.id)]
    assert any(m.startswith("resumed from the checkpoint at step") and m.endswith("(restart 1)") for m in messages)
    _check_store(store, before, done)


@pytest.mark.slow
@needs_ray
def test_a_crashed_ray_head_gets_a_new_head_the_job_resumes_and_recognition_goes_on(tiny, scot, store, state, tmp_path,
                                                                                   speech):
    before = _tree(store / "tiny")
    with _serve(tmp_path / "serve.log", store, state, data=(scot["train"], tiny.dev_manifest)) as srv, SpeechClient(srv.address, timeout=60) as c:
        job = c.submit_job(_spec(tiny, scot, "tiny-scot", epochs=6))
        wait_for(lambda: _checkpointed(state, job.id), timeout=300, every=0.5, what="the job's first checkpoint")
        head = _head(state)
        os.killpg(head["pid"], signal.SIGKILL)  # the head node crashes: GCS, raylet, dashboard, agents at once
        assert _recognizes(c, speech)  # recognition never depends on Ray
        done = c.wait_job(job.id, timeout=400)
        assert done.state == "SUCCEEDED", done.reason
        assert done.ray_job_id == f"{job.id}-2"  # submitted again to the new head, same run folder
        new_head = _head(state)
        assert new_head["pid"] != head["pid"] and _recognizes(c, speech)
        if Path(head["temp_dir"]).name.startswith("sa-ray-"):  # a temp dir of the server's making: cleaned up
            assert not Path(head["temp_dir"]).exists()
        srv.signal(signal.SIGTERM)
        assert srv.wait(timeout=120) == 0
    events = _events(state, job.id)
    lost = [e for e in events if e.get("phase") == "resubmit"]
    assert lost and "the local Ray head died under the job" in lost[0]["message"], events
    resumed = [e["message"] for e in events[events.index(lost[0]):] if "resumed from the checkpoint" in e.get("message", "")]
    assert resumed, "attempt 2 did not resume from the checkpoint"
    assert not _alive(new_head["pid"])
    _check_store(store, before, done)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_ray
def test_sigterm_with_an_external_ray_cluster_leaves_the_job_running_for_the_next_server(tiny, scot, store, state,
                                                                                         tmp_path, monkeypatch):
    """The server drains and stops; the job runs on in the cluster; a client waiting for it rides through the
    drain and the restart; the next server on the same state dir (and port) re-attaches the same Ray job."""
    from speechadapt.server.ray_backend import RayBackend

    before = _tree(store / "tiny")
    # jobs on a cluster run `python -m ...`: on this one that must be this environment's python
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cluster = RayBackend(None, tmp_path / "cluster", num_cpus=2)  # a Ray head of the test's own: "external"
    asyncio.run(cluster.start())
    try:
        args = ("--ray-address", cluster.dashboard_url, "--drain-seconds", 30)
        port = _free_port()
        with _serve(tmp_path / "serve1.log", store, state, *args, port=port, data=(scot["train"], tiny.dev_manifest)) as srv:
            address = srv.address
            with SpeechClient(address, timeout=60) as c:
                job = c.submit_job(_spec(tiny, scot, "tiny-scot", epochs=6))
            waited: dict = {}
            waiter = threading.Thread(target=lambda: waited.update(job=SpeechClient(address, timeout=30).wait_job(
                job.id, timeout=400)), daemon=True)
            waiter.start()
            wait_for(lambda: _checkpointed(state, job.id), timeout=300, every=0.5, what="the job's first checkpoint")
            srv.signal(signal.SIGTERM)
            assert srv.wait(timeout=30 + 60) == 0
        assert "drained: no open calls" in srv.log_text()
        info = asyncio.run(cluster.info(f"{job.id}-1"))
        assert info.status == "RUNNING", info  # the job was not stopped with the server
        assert waiter.is_alive()  # the client keeps waiting

        with _serve(tmp_path / "serve2.log", store, state, *args, port=port, data=(scot["train"], tiny.dev_manifest)) as srv:
            waiter.join(400)
            done = waited["job"]
            assert done.state == "SUCCEEDED" and done.ray_job_id == f"{job.id}-1", done
            srv.signal(signal.SIGTERM)
            assert srv.wait(timeout=90) == 0
        assert f"re-attaching job {job.id}" in srv.log_text()
        events = _events(state, job.id)  # what the job reported while no server followed it is kept too
        assert "result" in [e.get("phase") for e in events]
        assert max(e.get("step", 0) for e in events if e.get("phase") == "train") > 0
        _check_store(store, before, done)
    finally:
        asyncio.run(cluster.close())
