"""Graceful drain: `speechadapt serve --drain-seconds S` and SIGTERM.

A real `speechadapt serve` subprocess on 127.0.0.1 serving the tiny test model; real streams (raw stubs where a
test needs to hold a stream open at a chosen point, the client library elsewhere), real signals."""

from __future__ import annotations

import queue
import signal
import threading

import grpc
import jiwer
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ServeProcess, wait_for
from speechadapt.client import SpeechClient
from speechadapt.client.types import SpeechAdaptError
from speechadapt.v1 import adaptation_pb2 as apb
from speechadapt.v1 import adaptation_pb2_grpc as apb_grpc
from speechadapt.v1 import recognizer_pb2 as rpb
from speechadapt.v1 import recognizer_pb2_grpc as rpb_grpc

MARGIN_S = 60  # how long past its drain time a server may take to exit (model unload, thread shutdown)


class HeldStream:
    """A StreamingRecognize call the test feeds chunk by chunk (`send`, `end`); responses are read in a thread.
    Constructing it waits until the server has taken the stream on (its initial metadata arrived)."""

    def __init__(self, channel: grpc.Channel):
        self.requests: queue.Queue = queue.Queue()
        cfg = rpb.RecognitionConfig(encoding=rpb.LINEAR16, sample_rate_hertz=16000,
                                    endpointing=rpb.EndpointingConfig(disabled=True))
        self.requests.put(rpb.StreamingRecognizeRequest(streaming_config=rpb.StreamingRecognitionConfig(config=cfg)))
        self.call = rpb_grpc.RecognizerStub(channel).StreamingRecognize(iter(self.requests.get, None), timeout=300)
        self.responses: list[rpb.StreamingRecognizeResponse] = []
        self.error: grpc.RpcError | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.call.initial_metadata()  # sent once the session exists: the server counts the stream as open

    def _read(self) -> None:
        try:
            self.responses.extend(self.call)
        except grpc.RpcError as e:
            self.error = e

    def send(self, pcm: np.ndarray, chunk: int = 3200) -> None:
        data = pcm.tobytes()
        for i in range(0, len(data), chunk):
            self.requests.put(rpb.StreamingRecognizeRequest(audio_content=data[i:i + chunk]))

    def end(self) -> None:
        self.requests.put(None)

    def outcome(self, timeout: float = 120.0) -> tuple[list[str], grpc.RpcError | None]:
        """(final transcripts, the error the call ended with or None), once the call has ended."""
        self.reader.join(timeout)
        assert not self.reader.is_alive(), "the stream did not end"
        finals = [r.results[0].alternatives[0].transcript for r in self.responses if r.results and r.results[0].is_final]
        return finals, self.error


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def _serve(tiny, tmp_path, drain_seconds: float) -> ServeProcess:
    return ServeProcess(tmp_path / "serve.log", "--model-store", tiny.store, "--state-dir", tmp_path / "state",
                        "--default-model", "tiny", "--drain-seconds", drain_seconds)


def test_sigterm_refuses_new_streams_lets_open_ones_finish_cuts_the_rest_and_exits_0(tiny, clean_utterances, tmp_path):
    drain = 20
    (samples, text), (other, _) = clean_utterances[0], clean_utterances[1]
    wav = tmp_path / "u.wav"
    import soundfile as sf

    sf.write(wav, other, 16000)
    with _serve(tiny, tmp_path, drain) as srv, grpc.insecure_channel(srv.address) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        finishing, lingering = HeldStream(ch), HeldStream(ch)
        half = len(samples) // 2
        finishing.send(samples[:half])
        lingering.send(other[: len(other) // 2])  # and nothing more: it is still open when the drain time ends

        srv.signal(signal.SIGTERM)
        wait_for(lambda: _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING, what="health NOT_SERVING")
        # new recognitions are refused, streaming and unary, saying why and what to do
        with SpeechClient(srv.address, timeout=30) as c:
            with pytest.raises(SpeechAdaptError) as refused:
                list(c.stream_file(wav))
            assert refused.value.code == "UNAVAILABLE", refused.value
            assert "draining" in refused.value.message and "another replica" in refused.value.message
            with pytest.raises(SpeechAdaptError) as unary:
                c.recognize(wav)
            assert unary.value.code == "UNAVAILABLE" and "draining" in unary.value.message
            assert c.list_models()  # other calls are served until the stop
        with pytest.raises(grpc.RpcError) as raw:
            list(rpb_grpc.RecognizerStub(ch).StreamingRecognize(iter([rpb.StreamingRecognizeRequest()]), timeout=30))
        assert raw.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(raw.value.trailing_metadata() or ())["grpc-retry-pushback-ms"] == "1000"

        # the open stream runs to its end and gets its final result
        finishing.send(samples[half:])
        finishing.end()
        finals, error = finishing.outcome()
        assert error is None, error
        assert len(finals) == 1 and jiwer.wer(text, finals[0]) <= 0.25, (finals, text)

        # the one still open when the drain time runs out is ended with UNAVAILABLE, then the server exits 0
        finals, error = lingering.outcome(timeout=drain + MARGIN_S)
        assert finals == [] and error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert f"its drain time of {drain} s ran out" in error.details() and "retry" in error.details()
        assert srv.wait(timeout=drain + MARGIN_S) == 0, srv.log_text()[-4000:]
    log = srv.log_text()
    assert "draining: no new recognitions; waiting up to 20 s for 2 open calls" in log, log[-4000:]
    assert "ended 1 calls still open" in log


def test_a_second_signal_stops_at_once_and_open_watches_end_at_the_drain(tiny, clean_utterances, tmp_path):
    from speechadapt.server.jobs import JobStore

    samples, _ = clean_utterances[0]
    with _serve(tiny, tmp_path, 600) as srv, grpc.insecure_channel(srv.address) as ch:
        # a job recorded after the server started (so not driven: no Ray), with a client watching it
        store = JobStore(tmp_path / "state" / "jobs.sqlite")
        job = store.create({"name": "tiny-x", "base_model": "tiny", "train_manifest": "/t", "dev_manifest": "/d"},
                           tmp_path / "state" / "runs" / "w")
        store.close()
        adaptation = apb_grpc.AdaptationStub(ch)
        watch = adaptation.WatchJob(apb.WatchJobRequest(id=job.id), timeout=120)
        assert next(watch).phase == "queued"
        held = HeldStream(ch)
        held.send(samples[: len(samples) // 2])

        srv.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:  # the watch ends at once: the client's wait watches again
            next(watch)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "watch the job again" in ended.value.details()
        assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert adaptation.GetJob(apb.GetJobRequest(id=job.id), timeout=10).state == apb.QUEUED  # queries: served
        for call, req in ((adaptation.UploadData, iter([apb.UploadDataRequest()])),
                          (adaptation.SubmitJob, apb.SubmitJobRequest()),
                          (lambda r, timeout: next(adaptation.WatchJob(r, timeout=timeout)), apb.WatchJobRequest(id=job.id))):
            with pytest.raises(grpc.RpcError) as refused:
                call(req, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in refused.value.details()

        srv.signal(signal.SIGINT)  # the second signal: no waiting out the 600 s
        finals, error = held.outcome()
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "it was told to stop at once" in error.details()
        assert srv.wait(timeout=MARGIN_S) == 0, srv.log_text()[-4000:]
    assert "a second stop signal" in srv.log_text()


def test_drain_seconds_out_of_range_is_refused_before_serving(tmp_path, capsys):
    from speechadapt.client import cli

    assert cli.main(["serve", "--port", "0", "--model-store", str(tmp_path / "store"), "--drain-seconds", "-1"]) == 2
    assert "drain_seconds must be 0..3600" in capsys.readouterr().err
