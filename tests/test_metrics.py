"""Metrics and logs: `serve --metrics-port N` (Prometheus text, a registry per server) and `--log-format json`.

Real components throughout: in-process servers on 127.0.0.1 serving the shipped base-en model, a `speechadapt
serve` subprocess for the JSON log, a synthesized WAV, the real clients, scrapes over HTTP parsed with
prometheus_client's own parser. Jobs are submitted to a server whose Ray address has nothing listening, so they
are recorded and then fail without training (no Ray is started)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerThread, free_port, wait_for
from speechadapt.client import SpeechClient, StreamConfig, cli
from speechadapt.client.types import SpeechAdaptError
from speechadapt.server.app import SpeechServer
from speechadapt.server.config import ServerConfig
from speechadapt.v1 import recognizer_pb2, recognizer_pb2_grpc

STREAM = "/speechadapt.v1.Recognizer/StreamingRecognize"
SPEC = {"name": "base-en-x", "base_model": "base-en", "train_manifest": "/nonexistent/train.jsonl",
        "dev_manifest": "/nonexistent/dev.jsonl"}


def scrape(port: int) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def job_server(tmp: Path, **config) -> ServerThread:
    return ServerThread(model_store=tmp / "store", default_model="base-en", state_dir=tmp / "state",
                        ray_address=f"http://127.0.0.1:{free_port()}",  # nothing listens: jobs fail
                        data_roots=(Path("/nonexistent"),), **config)


def test_metrics_count_streams_rpcs_audio_latency_batches_loads_uploads_and_jobs(tmp_path, speech):
    srv = job_server(tmp_path, metrics_port=0)
    try:
        port = srv.server.metrics_port
        assert port and port != srv.port
        before = scrape(port)
        assert value(before, "speechadapt_active_streams") == 0
        assert value(before, "speechadapt_jobs", state="QUEUED") == 0
        assert not any(name == "speechadapt_rpcs_total" for name, _ in before)

        with SpeechClient(srv.address, timeout=60) as c:
            # a stream without endpointing: its one final comes after the end of the audio
            finals = [r for r in c.stream_file(speech, endpointing=False) if r.is_final]
            assert len(finals) == 1 and finals[0].transcript.strip()
            model = finals[0].model
            # a bad stream: audio before the config
            with grpc.insecure_channel(srv.address) as ch:
                stub = recognizer_pb2_grpc.RecognizerStub(ch)
                with pytest.raises(grpc.RpcError) as bad:
                    list(stub.StreamingRecognize(iter([recognizer_pb2.StreamingRecognizeRequest(audio_content=b"\0\0")]),
                                                 timeout=30))
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.RpcError) as unknown:  # a method nobody implements: one bounded label
                    ch.unary_unary("/speechadapt.v1.Nope/Nothing" + secrets.token_hex(4))(b"", timeout=30)
                assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
                # a stream the client cancels while it is open: active while open, then CANCELLED
                release = threading.Event()

                def open_stream():
                    yield recognizer_pb2.StreamingRecognizeRequest(
                        streaming_config=StreamConfig(sample_rate_hertz=16000).to_proto())
                    release.wait(60)

                call = stub.StreamingRecognize(open_stream(), timeout=60)
                wait_for(lambda: value(scrape(port), "speechadapt_active_streams") == 1, timeout=30)
                call.cancel()
                release.set()
                wait_for(lambda: value(scrape(port), "speechadapt_streams_total", code="CANCELLED") == 1, timeout=30)
            # an upload: its blob bytes are counted
            manifest = tmp_path / "one.jsonl"
            manifest.write_text(json.dumps({"audio": str(speech), "text": "anything"}) + "\n")
            assert c.upload_data(manifest).startswith("data://")
            # a job: QUEUED, then FAILED (Ray cannot be reached)
            job = c.submit_job(SPEC)
            events = list(c.watch_job(job.id, timeout=60))
            assert events[-1].state == "FAILED", events[-1]

        def counted() -> dict:
            s = scrape(port)
            return s if value(s, "speechadapt_streams_total", code="INVALID_ARGUMENT") == 1 else {}

        wait_for(lambda: counted(), timeout=30)  # the aborted stream is counted as its handler unwinds
        s = counted()
        assert value(s, "speechadapt_streams_total", code="OK") == 1
        assert value(s, "speechadapt_active_streams") == 0  # none open: the cancelled one is counted out too
        assert value(s, "speechadapt_rpcs_total", method=STREAM, code="CANCELLED") == 1
        assert value(s, "speechadapt_rpcs_total", method=STREAM, code="OK") == 1
        assert value(s, "speechadapt_rpcs_total", method=STREAM, code="INVALID_ARGUMENT") == 1
        assert value(s, "speechadapt_rpcs_total", method="unknown", code="UNIMPLEMENTED") == 1
        assert value(s, "speechadapt_rpcs_total", method="/speechadapt.v1.Adaptation/SubmitJob", code="OK") == 1
        assert value(s, "speechadapt_rpcs_total", method="/speechadapt.v1.Adaptation/UploadData", code="OK") == 1
        assert not any("Nope" in str(labels) for _, labels in s)
        # audio: exactly the file's duration, on the model that served it
        assert value(s, "speechadapt_audio_seconds_total", model=model) == pytest.approx(sf.info(speech).duration,
                                                                                        abs=1e-3)
        # one final: one real-time factor and one end-of-audio latency observation
        assert value(s, "speechadapt_real_time_factor_count", model=model) == 1
        assert value(s, "speechadapt_real_time_factor_sum", model=model) > 0
        assert value(s, "speechadapt_final_latency_seconds_count", model=model) == 1
        assert 0 < value(s, "speechadapt_final_latency_seconds_sum", model=model) < 60
        # batches of one stream hold one chunk each
        batches = value(s, "speechadapt_batch_size_count")
        assert batches >= 1 and value(s, "speechadapt_batch_size_bucket", le="1.0") == batches
        assert value(s, "speechadapt_batch_size_sum") == batches
        assert value(s, "speechadapt_model_loads_total", model=model) == 1
        assert value(s, "speechadapt_upload_bytes_total") == speech.stat().st_size
        assert {st: value(s, "speechadapt_jobs", state=st) for st in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED",
                                                                        "CANCELLED")} == {
            "QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 0, "FAILED": 1, "CANCELLED": 0}

        # Recognize: its audio and one real-time factor for the whole call; no end-of-stream latency
        with SpeechClient(srv.address, timeout=60) as c:
            assert c.recognize(speech)[0].transcript.strip()
        s = scrape(port)
        assert value(s, "speechadapt_audio_seconds_total", model=model) == pytest.approx(2 * sf.info(speech).duration,
                                                                                        abs=1e-3)
        assert value(s, "speechadapt_real_time_factor_count", model=model) == 2
        assert value(s, "speechadapt_final_latency_seconds_count", model=model) == 1
        assert value(s, "speechadapt_streams_total", code="OK") == 1  # not a stream
        assert value(s, "speechadapt_rpcs_total", method="/speechadapt.v1.Recognizer/Recognize", code="OK") == 1
        assert value(s, "speechadapt_model_loads_total", model=model) == 1  # loaded once
    finally:
        srv.stop()
    with pytest.raises(urllib.error.URLError):  # stopped with the server
        scrape(port)


def test_each_server_has_its_own_registry_and_the_metrics_port_is_checked(tmp_path):
    a = ServerThread(model_store=tmp_path / "store", default_model="base-en", state_dir=tmp_path / "a",
                     metrics_port=0)
    b = None
    try:
        b = ServerThread(model_store=tmp_path / "store", default_model="base-en", state_dir=tmp_path / "b",
                         metrics_port=0)
        with SpeechClient(a.address, timeout=60) as c:
            assert c.list_models()
        list_models = "/speechadapt.v1.Models/ListModels"
        assert value(scrape(a.server.metrics_port), "speechadapt_rpcs_total", method=list_models, code="OK") == 1
        assert value(scrape(b.server.metrics_port), "speechadapt_rpcs_total", method=list_models, code="OK") is None
        # a metrics port in use stops the start before anything loads, naming it; the first server keeps serving
        taken = a.server.metrics_port
        third = SpeechServer(ServerConfig(port=0, model_store=tmp_path / "store", default_model="base-en",
                                          state_dir=tmp_path / "c", metrics_port=taken))
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{taken}"):
            asyncio.run(third.start())
        assert third.server is None and third.port is None
        assert value(scrape(taken), "speechadapt_rpcs_total", method=list_models, code="OK") == 1
    finally:
        a.stop()
        if b is not None:
            b.stop()
    for kwargs, message in [({"metrics_port": 70000}, "metrics_port must be 0..65535"),
                            ({"metrics_host": "0.0.0.0"}, "metrics_host needs metrics_port"),
                            ({"port": 9464, "metrics_port": 9464}, "is the gRPC port"),
                            ({"log_format": "xml"}, "log_format must be one of text, json")]:
        with pytest.raises(ValueError, match=message):
            ServerConfig(**kwargs)
    assert ServerConfig(port=9464, metrics_port=9464, metrics_host="127.0.0.2").metrics_bind == "127.0.0.2"
    for argv in (["--metrics-host", "0.0.0.0"], ["--metrics-port", "70000"], ["--log-format", "xml"]):
        with pytest.raises(SystemExit) as usage:  # the CLI refuses them before starting anything
            cli.main(["serve", "--port", "0", "--model-store", str(tmp_path / "store"), *argv])
        assert usage.value.code == 2


def test_serve_json_logs_a_line_per_rpc_and_job_transition_and_serves_metrics(tmp_path, speech):
    token = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token} admin ops\n")
    tokens.chmod(0o600)
    err = (tmp_path / "server.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "speechadapt.client.cli", "serve", "--log-format", "json",
                             "--port", "0", "--metrics-port", "0", "--model-store", str(tmp_path / "store"),
                             "--default-model", "base-en", "--state-dir", str(tmp_path / "state"),
                             "--ray-address", f"http://127.0.0.1:{free_port()}", "--auth-tokens", str(tokens),
                             "--data-root", "/nonexistent"],
                            stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash shows its stacks
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, (tmp_path / "server.err").read_text()
        address = line.split()[-1]
        metrics_url = proc.stdout.readline().split()[-1]
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")
        metrics_port = int(metrics_url.rsplit(":", 1)[1].split("/")[0])
        with SpeechClient(address, token=token, timeout=60) as c:
            assert c.recognize(speech)[0].transcript.strip()
            job = c.submit_job(SPEC)
            for _ in range(3):  # the client cancels each watch at the job's end: its line is still written
                assert list(c.watch_job(job.id, timeout=60))[-1].state == "FAILED"
        with SpeechClient(address, token="", timeout=60) as c, pytest.raises(SpeechAdaptError) as refused:
            c.list_models()
        assert refused.value.code == "UNAUTHENTICATED"
        # counted when the server's handler returns, which may be just after the client has its answer
        wait_for(lambda: value(scrape(metrics_port), "speechadapt_rpcs_total", method="/speechadapt.v1.Models/ListModels",
                               code="UNAUTHENTICATED") == 1, timeout=30, what="the refused ListModels counted")
        s = scrape(metrics_port)
        assert value(s, "speechadapt_jobs", state="FAILED") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err.close()
    text = (tmp_path / "server.err").read_text()
    assert token not in text
    lines = [json.loads(raw) for raw in text.splitlines() if raw.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(d) for d in lines)
    rpcs = [d for d in lines if d.get("event") == "rpc"]

    def rpc(method: str, code: str) -> dict:
        (found,) = [d for d in rpcs if d["method"] == f"/speechadapt.v1.{method}" and d["code"] == code]
        return found

    rec = rpc("Recognizer/Recognize", "OK")
    assert rec["caller"] == "ops" and rec["duration_ms"] > 0
    assert rec["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:"))
    assert rpc("Adaptation/SubmitJob", "OK")["caller"] == "ops"
    assert "caller" not in rpc("Models/ListModels", "UNAUTHENTICATED")
    assert len([d for d in rpcs if d["method"] == "/speechadapt.v1.Adaptation/WatchJob"]) == 3
    jobs = [(d["from"], d["to"]) for d in lines if d.get("event") == "job" and d["job_id"] == job.id]
    assert jobs == [(None, "QUEUED"), ("QUEUED", "FAILED")]
    failed = next(d for d in lines if d.get("event") == "job" and d["to"] == "FAILED")
    assert "Ray" in failed["reason"]
    assert any(d.get("event") == "metrics" and d["port"] == metrics_port for d in lines)
