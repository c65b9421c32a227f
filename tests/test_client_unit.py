"""The light client without a speech server: configs, results, audio, CLI parsing, import weight.

The wire tests use a loopback gRPC Recognizer that records what the client
sends and answers with fixed results, so the client's side of the contract
(config first, exact LINEAR16 bytes, error wrapping) is checked without torch.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from speechadapt.client import (
    AsyncSpeechClient, ModelInfo, Result, SpeechAdaptError, SpeechClient, StreamConfig, paced, pcm_chunks, read_audio,
)
from speechadapt.client.cli import build_parser, main
from speechadapt.client.types import Word
from speechadapt.v1 import models_pb2, recognizer_pb2, recognizer_pb2_grpc

PY = sys.executable
JSON_KEYS = {"file", "is_final", "transcript", "confidence", "stability", "words"}


def sine(path: Path, rate: int, channels: int, seconds: float = 1.0, subtype: str = "PCM_16") -> np.ndarray:
    """Write a 440 Hz sine (channel c scaled by 1/(c+1)) and return the int16 samples as written."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([x / (c + 1) for c in range(channels)], axis=1) if channels > 1 else x
    pcm = np.round(data * 32767).astype(np.int16)
    sf.write(path, pcm, rate, subtype=subtype)
    return pcm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dur(s: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(s * 1e9)))
    return d


# -- StreamConfig


def test_stream_config_defaults_to_proto():
    p = StreamConfig(sample_rate_hertz=16000).to_proto()
    c = p.config
    assert c.encoding == recognizer_pb2.LINEAR16
    assert (c.sample_rate_hertz, c.audio_channel_count, c.max_alternatives) == (16000, 1, 1)
    assert c.enable_word_time_offsets is True
    assert c.model == "" and c.language_code == ""
    assert not c.HasField("endpointing")
    assert len(c.speech_contexts) == 0
    assert p.interim_results is False and p.single_utterance is False


def test_stream_config_all_fields_to_proto():
    cfg = StreamConfig(sample_rate_hertz=44100, audio_channel_count=2, encoding="wav", model="tiny@1",
                       language_code="en-US", max_alternatives=3, word_time_offsets=False, interim_results=True,
                       single_utterance=True, phrases=["speech adapt", "Ray"], boost=4.5,
                       stop_history_ms=500, max_utterance_ms=20000)
    p = cfg.to_proto()
    c = p.config
    assert c.encoding == recognizer_pb2.WAV
    assert (c.sample_rate_hertz, c.audio_channel_count) == (44100, 2)
    assert (c.model, c.language_code, c.max_alternatives) == ("tiny@1", "en-US", 3)
    assert c.enable_word_time_offsets is False
    assert p.interim_results is True and p.single_utterance is True
    assert [list(sc.phrases) for sc in c.speech_contexts] == [["speech adapt", "Ray"]]
    assert c.speech_contexts[0].boost == pytest.approx(4.5)
    assert c.HasField("endpointing")
    assert (c.endpointing.disabled, c.endpointing.stop_history_ms, c.endpointing.max_utterance_ms) == (False, 500, 20000)
    assert cfg.phrases == ("speech adapt", "Ray")  # lists become tuples: the config stays immutable


def test_stream_config_endpointing_off_sets_message():
    c = StreamConfig(sample_rate_hertz=8000, endpointing=False).to_proto().config
    assert c.HasField("endpointing") and c.endpointing.disabled
    assert c.endpointing.stop_history_ms == 0


@pytest.mark.parametrize("kwargs, text", [
    (dict(sample_rate_hertz=96000), "resample"),
    (dict(sample_rate_hertz=4000), "8000..48000"),
    (dict(sample_rate_hertz=0), "8000..48000"),
    (dict(sample_rate_hertz=16000, audio_channel_count=9), "audio_channel_count"),
    (dict(sample_rate_hertz=16000, encoding="MP3"), "encoding"),
    (dict(sample_rate_hertz=16000, max_alternatives=11), "max_alternatives"),
    (dict(sample_rate_hertz=16000, boost=3.0), "no phrases"),
    (dict(sample_rate_hertz=16000, phrases=[""]), "phrases"),
    (dict(sample_rate_hertz=16000, stop_history_ms=50), "stop_history_ms"),
    (dict(sample_rate_hertz=16000, max_utterance_ms=500), "max_utterance_ms"),
])
def test_stream_config_rejects_bad_values(kwargs, text):
    with pytest.raises(ValueError, match=text):
        StreamConfig(**kwargs)


def test_stream_config_rate_zero_allowed_for_wav_header():
    assert StreamConfig(sample_rate_hertz=0, encoding="WAV").to_proto().config.sample_rate_hertz == 0


# -- results and models


def test_result_from_proto_and_json_contract():
    r = recognizer_pb2.StreamingRecognitionResult(
        is_final=True, stability=0.0, result_start_offset=dur(1.25), result_end_offset=dur(2.5),
        alternatives=[
            recognizer_pb2.SpeechRecognitionAlternative(
                transcript="hello world", confidence=0.9,
                words=[recognizer_pb2.WordInfo(word="hello", start_offset=dur(1.25), end_offset=dur(1.7), confidence=0.95),
                       recognizer_pb2.WordInfo(word="world", start_offset=dur(1.8), end_offset=dur(2.4), confidence=0.85)]),
            recognizer_pb2.SpeechRecognitionAlternative(transcript="hollow world", confidence=0.1),
        ])
    res = Result.from_streaming(r, model="tiny@1")
    assert res.transcript == "hello world" and res.confidence == pytest.approx(0.9)
    assert (res.start, res.end, res.model, res.is_final) == (1.25, 2.5, "tiny@1", True)
    assert res.words[1] == Word("world", 1.8, 2.4, 0.85)
    assert len(res.alternatives) == 2 and res.alternatives[1].transcript == "hollow world"

    j = res.to_json("a.wav")
    assert set(j) == JSON_KEYS | {"alternatives"}  # listed only with an n-best list
    assert [a["transcript"] for a in j["alternatives"]] == ["hello world", "hollow world"]
    assert j["file"] == "a.wav" and j["is_final"] is True and j["transcript"] == "hello world"
    assert j["confidence"] == 0.9  # float32 noise removed
    assert j["words"] == [{"word": "hello", "start": 1.25, "end": 1.7}, {"word": "world", "start": 1.8, "end": 2.4}]
    assert json.loads(json.dumps(j)) == j


def test_empty_result_json():
    j = Result(is_final=False, stability=0.4).to_json()
    assert j == {"file": None, "is_final": False, "transcript": "", "confidence": 0.0, "stability": 0.4, "words": []}


def test_model_info_from_proto():
    ts = Timestamp()
    ts.FromJsonString("2025-03-01T12:00:00Z")
    m = models_pb2.Model(name="tiny", version=3, architecture="conformer-ctc", sample_rate_hertz=16000,
                         language_code="en-US", metrics={"wer/dev": 0.12, "cer/dev": 0.05}, create_time=ts,
                         lineage=models_pb2.Lineage(base_model="tiny@2", job_id="j1", strategy="adapters"),
                         num_parameters=1234567, source="store", is_default=True, description="d")
    info = ModelInfo.from_proto(m)
    assert info.ref == "tiny@3"
    assert info.metrics == {"cer/dev": pytest.approx(0.05), "wer/dev": pytest.approx(0.12)}
    assert info.lineage["base_model"] == "tiny@2" and info.lineage["strategy"] == "adapters"
    assert info.create_time == "2025-03-01T12:00:00Z"
    assert (info.num_parameters, info.source, info.is_default) == (1234567, "store", True)
    assert ModelInfo.from_proto(models_pb2.Model(name="x", version=1)).create_time == ""
    assert json.loads(json.dumps(info.to_json()))["ref"] == "tiny@3"


# -- audio


def test_pcm_chunks_8k_mono(tmp_path):
    pcm = sine(tmp_path / "a.wav", 8000, 1, seconds=1.05)
    samples, rate = read_audio(tmp_path / "a.wav")
    assert rate == 8000 and samples.dtype == np.int16 and samples.shape == (8400,)
    np.testing.assert_array_equal(samples, pcm)
    chunks = list(pcm_chunks(samples, rate))
    assert [len(c) for c in chunks] == [1600] * 10 + [800]  # 100 ms = 800 frames * 2 bytes; last shorter
    assert chunks[0][:4] == pcm[:2].astype("<i2").tobytes()
    assert int.from_bytes(chunks[0][2:4], "little", signed=True) == pcm[1]
    np.testing.assert_array_equal(np.frombuffer(b"".join(chunks), "<i2"), pcm)


def test_pcm_chunks_44k_stereo_interleaved(tmp_path):
    pcm = sine(tmp_path / "s.flac", 44100, 2, seconds=0.5)
    samples, rate = read_audio(tmp_path / "s.flac")
    assert rate == 44100 and samples.shape == (22050, 2)
    chunks = list(pcm_chunks(samples, rate, chunk_ms=100))
    assert [len(c) for c in chunks] == [4410 * 2 * 2] * 5
    flat = np.frombuffer(b"".join(chunks), "<i2")
    np.testing.assert_array_equal(flat[0::2], pcm[:, 0])  # L R L R ...
    np.testing.assert_array_equal(flat[1::2], pcm[:, 1])
    assert list(pcm_chunks(samples, rate, chunk_ms=20))[0] == pcm[:882].astype("<i2").tobytes()


def test_read_audio_float_file_is_clipped(tmp_path):
    sf.write(tmp_path / "f.wav", np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32), 16000, subtype="FLOAT")
    samples, _ = read_audio(tmp_path / "f.wav")
    assert samples.tolist() == [0, 16384, -16384, 32767, -32768]


def test_read_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_audio(tmp_path / "nope.wav")
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 10)
    with pytest.raises(ValueError, match=r"notes\.txt.*convert"):
        read_audio(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not a file"):
        read_audio(tmp_path)
    sine(tmp_path / "hi.wav", 96000, 1, seconds=0.1)
    with pytest.raises(ValueError, match=r"96000 Hz.*resample"):
        read_audio(tmp_path / "hi.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    with pytest.raises(ValueError, match="no audio"):
        read_audio(tmp_path / "empty.wav")


def test_pcm_chunks_rejects_bad_input():
    with pytest.raises(ValueError, match="int16"):
        next(pcm_chunks(np.zeros(10, np.float32), 16000))
    with pytest.raises(ValueError, match="chunk_ms"):
        next(pcm_chunks(np.zeros(10, np.int16), 16000, chunk_ms=0))


def test_paced_is_real_time_without_drift():
    chunks = [b"\0" * 320] * 6  # 10 ms each at 16 kHz mono
    t0 = time.monotonic()
    stamps = []
    for _ in paced(chunks, bytes_per_second=32000):
        stamps.append(time.monotonic() - t0)
    assert stamps[0] < 0.01  # the first chunk goes at once
    assert 0.05 <= stamps[-1] < 0.09  # the sixth when 50 ms of audio have played


# -- a loopback Recognizer that records requests


class Recorder(recognizer_pb2_grpc.RecognizerServicer):
    """Keeps every request; answers one interim and one final per stream, or aborts on a 7 kHz config."""

    def __init__(self):
        self.streams: list[list[recognizer_pb2.StreamingRecognizeRequest]] = []
        self.unary: list[recognizer_pb2.RecognizeRequest] = []

    def StreamingRecognize(self, request_iterator, context):
        reqs = list(request_iterator)
        self.streams.append(reqs)
        if reqs and reqs[0].streaming_config.config.sample_rate_hertz == 7000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz must be 8000..48000")
        alt = recognizer_pb2.SpeechRecognitionAlternative
        yield recognizer_pb2.StreamingRecognizeResponse(model="rec@1", results=[
            recognizer_pb2.StreamingRecognitionResult(alternatives=[alt(transcript="hel")], stability=0.5)])
        yield recognizer_pb2.StreamingRecognizeResponse(results=[
            recognizer_pb2.StreamingRecognitionResult(alternatives=[alt(transcript="hello", confidence=0.75)],
                                                      is_final=True, result_end_offset=dur(1.0))])

    def Recognize(self, request, context):
        self.unary.append(request)
        return recognizer_pb2.RecognizeResponse(model="rec@1", results=[recognizer_pb2.SpeechRecognitionResult(
            alternatives=[recognizer_pb2.SpeechRecognitionAlternative(transcript="hello")])])


@pytest.fixture
def recorder():
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec, f"127.0.0.1:{port}"
    server.stop(0)


def test_stream_file_sends_config_then_exact_pcm(tmp_path, recorder):
    rec, address = recorder
    pcm = sine(tmp_path / "s.wav", 22050, 2, seconds=0.35)
    with SpeechClient(address, timeout=30) as client:
        results = list(client.stream_file(tmp_path / "s.wav", model="m@2", interim_results=True, phrases=["hi"]))
    assert [(r.is_final, r.transcript, r.model) for r in results] == [(False, "hel", "rec@1"), (True, "hello", "rec@1")]
    assert results[1].end == 1.0 and results[0].stability == 0.5
    reqs = rec.streams[0]
    assert reqs[0].WhichOneof("streaming_request") == "streaming_config"
    c = reqs[0].streaming_config
    assert (c.config.sample_rate_hertz, c.config.audio_channel_count, c.config.model) == (22050, 2, "m@2")
    assert c.interim_results and list(c.config.speech_contexts[0].phrases) == ["hi"]
    assert all(r.WhichOneof("streaming_request") == "audio_content" for r in reqs[1:])
    assert [len(r.audio_content) for r in reqs[1:]] == [2205 * 4] * 3 + [1102 * 4]
    np.testing.assert_array_equal(np.frombuffer(b"".join(r.audio_content for r in reqs[1:]), "<i2"), pcm.ravel())


def test_recognize_sends_whole_file(tmp_path, recorder):
    rec, address = recorder
    pcm = sine(tmp_path / "m.wav", 16000, 1, seconds=0.2)
    with SpeechClient(address) as client:
        results = client.recognize(tmp_path / "m.wav", language_code="en-US")
    assert [(r.is_final, r.transcript, r.model) for r in results] == [(True, "hello", "rec@1")]
    req = rec.unary[0]
    assert (req.config.sample_rate_hertz, req.config.language_code) == (16000, "en-US")
    assert req.audio_content == pcm.astype("<i2").tobytes()


def test_server_error_becomes_speechadapt_error(recorder):
    _, address = recorder
    cfg = recognizer_pb2.StreamingRecognitionConfig(config=recognizer_pb2.RecognitionConfig(sample_rate_hertz=7000))
    with SpeechClient(address) as client, pytest.raises(SpeechAdaptError) as e:
        list(client.stream([b"\0\0" * 100], cfg))
    assert e.value.code == "INVALID_ARGUMENT" and e.value.status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(e.value) == "INVALID_ARGUMENT: sample_rate_hertz must be 8000..48000"
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, grpc.RpcError)


def test_bad_chunk_raises_the_callers_error(recorder):
    _, address = recorder
    with SpeechClient(address) as client, pytest.raises(TypeError, match="chunks must be bytes"):
        list(client.stream([b"\0\0", "text"], StreamConfig(sample_rate_hertz=16000)))


def test_async_client_streams_and_recognizes(tmp_path, recorder):
    rec, address = recorder
    sine(tmp_path / "a.wav", 16000, 1, seconds=0.25)

    async def go():
        async with AsyncSpeechClient(address, timeout=30) as client:
            streamed = [r async for r in client.stream_file(tmp_path / "a.wav", realtime=True)]
            unary = await client.recognize(tmp_path / "a.wav")
            return streamed, unary

    t0 = time.monotonic()
    streamed, unary = asyncio.run(go())
    assert time.monotonic() - t0 >= 0.2  # paced: the last chunk leaves after 200 ms of audio
    assert [r.transcript for r in streamed] == ["hel", "hello"] and unary[0].transcript == "hello"
    assert [len(r.audio_content) for r in rec.streams[0][1:]] == [3200, 3200, 1600]


def test_unreachable_server_is_unavailable():
    with SpeechClient(f"127.0.0.1:{free_port()}", timeout=10) as client, pytest.raises(SpeechAdaptError) as e:
        client.list_models()
    assert e.value.code == "UNAVAILABLE"


def test_client_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="target"):
        SpeechClient("")
    with pytest.raises(FileNotFoundError, match="ca.pem"):
        SpeechClient("127.0.0.1:1", root_certificates=tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="timeout"):
        SpeechClient("127.0.0.1:1", timeout=0)
    sine(tmp_path / "a.wav", 16000, 1, seconds=0.1)
    with SpeechClient("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="sample_rate_hertz comes from the audio file"):
            client.stream_file(tmp_path / "a.wav", sample_rate_hertz=8000)
        with pytest.raises(TypeError, match="unknown config option"):
            client.stream_file(tmp_path / "a.wav", langauge_code="en")


# -- CLI


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "speechadapt.client.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_help_and_version():
    bin_dir = Path(PY).parent
    script = bin_dir / "speechadapt"
    cmd = [str(script)] if script.exists() else [PY, "-m", "speechadapt.client.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for sub in ("transcribe", "models", "eval", "serve", "data"):
        assert sub in out.stdout
    v = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.strip().startswith("speechadapt ")


def test_cli_parses_contract_forms(monkeypatch):
    monkeypatch.delenv("SPEECHADAPT_SERVER", raising=False)
    p = build_parser()
    a = p.parse_args(["transcribe", "a.wav", "b.flac", "--server", "h:1", "--model", "m@2", "--interim",
                      "--realtime", "--json", "--tls", "--ca-cert", "ca.pem", "--phrase", "x", "y", "--phrase", "z",
                      "--boost", "2.5"])
    assert a.files == ["a.wav", "b.flac"] and a.server == "h:1" and a.model == "m@2"
    assert a.interim and a.realtime and a.json and a.tls and a.ca_cert == "ca.pem"
    assert a.phrase == ["x", "y", "z"] and a.boost == 2.5
    a = p.parse_args(["models", "list", "--json", "--all-versions"])
    assert a.json and a.all_versions and a.server == "127.0.0.1:50051"
    assert p.parse_args(["models", "get", "tiny@1"]).ref == "tiny@1"
    a = p.parse_args(["eval", "--model", "tiny", "--model-store", "st", "--manifest", "m.jsonl", "--json"])
    assert (a.model, a.model_store, a.manifest, a.json, a.device) == ("tiny", "st", "m.jsonl", True, "cpu")
    a = p.parse_args(["serve"])
    assert (a.host, a.port, a.model_store, a.max_streams, a.max_message_mb, a.device) == \
        ("127.0.0.1", 50051, "./models", 64, 8, "cpu")
    assert a.tls_cert is None and a.tls_key is None and a.default_model is None
    monkeypatch.setenv("SPEECHADAPT_SERVER", "asr.example:443")
    assert build_parser().parse_args(["models", "list"]).server == "asr.example:443"


@pytest.mark.parametrize("argv", [
    ["serve", "--tls-cert", "cert.pem"],
    ["serve", "--tls-key", "key.pem"],
    ["serve", "--max-streams", "0"],
    ["serve", "--port", "70000"],
    ["transcribe"],
    ["models", "list", "--bogus"],
    [],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_transcribe_errors(tmp_path):
    r = run_cli("transcribe", str(tmp_path / "missing.wav"))
    assert r.returncode == 2 and r.stderr.startswith("error: audio file not found") and "missing.wav" in r.stderr
    sine(tmp_path / "a.wav", 16000, 1, seconds=0.1)
    r = run_cli("transcribe", str(tmp_path / "a.wav"), "--server", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and r.stderr.startswith("error: UNAVAILABLE: ")


def test_cli_transcribe_output(tmp_path, recorder):
    _, address = recorder
    sine(tmp_path / "a.wav", 16000, 1, seconds=0.1)
    f = str(tmp_path / "a.wav")
    r = run_cli("transcribe", f, f, "--server", address, "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["file"], d["is_final"], d["transcript"]) for d in lines] == [(f, True, "hello")] * 2
    assert all(set(d) == JSON_KEYS for d in lines)
    r = run_cli("transcribe", f, "--server", address, "--json", "--interim")
    assert [json.loads(line)["is_final"] for line in r.stdout.splitlines()] == [False, True]
    r = run_cli("transcribe", f, "--server", address, "--interim")
    assert r.returncode == 0 and r.stdout.splitlines() == ["partial: hel", f"[{f}] hello"]


def test_client_import_is_light():
    code = ("import speechadapt.client, speechadapt.client.cli; import sys; "
            "assert not any(m.split('.')[0] in ('torch','ray','speechbrain','torchaudio') for m in sys.modules)")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_cli_parser_build_is_light():
    """Building the parser (what `speechadapt transcribe` does first) imports no heavy module either."""
    code = ("import sys; from speechadapt.client.cli import build_parser; build_parser(); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch','ray','speechbrain','torchaudio')]; "
            "assert not heavy, heavy[:5]")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_lost_status_is_only_grpc_aio_failed_write():
    from grpc.aio import AioRpcError, Metadata

    from speechadapt.client._grpc import lost_status

    def err(code, debug):
        return AioRpcError(code, Metadata(), Metadata(), details="Internal error from Core", debug_error_string=debug)

    failed_write = 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x7f96>,)'
    assert lost_status(err(grpc.StatusCode.INTERNAL, failed_write))
    assert not lost_status(err(grpc.StatusCode.INTERNAL, "a real internal error"))
    assert not lost_status(err(grpc.StatusCode.RESOURCE_EXHAUSTED, failed_write))
