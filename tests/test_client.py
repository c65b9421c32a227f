"""The client library and CLI against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import jiwer
import pytest
import soundfile as sf

from conftest import with_silence
from speechadapt.client import AsyncSpeechClient, SpeechAdaptError, SpeechClient

SA = [sys.executable, "-m", "speechadapt.client.cli"]


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory, server, clean_utterances):
    """A stereo FLAC file with two utterances and silence between (the server downmixes), their
    references, and the finals the server gives for the same PCM through the raw gRPC stub:
    the client must reproduce those exactly (accuracy itself is tested in test_server)."""
    import numpy as np

    from speechadapt.v1 import recognizer_pb2 as pb
    from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

    samples = with_silence(clean_utterances[:2])
    stereo = np.stack([samples, samples], 1)
    path = tmp_path_factory.mktemp("audio") / "two.flac"
    sf.write(path, stereo, 16000, subtype="PCM_16")
    cfg = pb.StreamingRecognitionConfig(config=pb.RecognitionConfig(
        encoding=pb.LINEAR16, sample_rate_hertz=16000, audio_channel_count=2, enable_word_time_offsets=True))
    data = stereo.tobytes()
    reqs = [pb.StreamingRecognizeRequest(streaming_config=cfg)] + [
        pb.StreamingRecognizeRequest(audio_content=data[i : i + 6400]) for i in range(0, len(data), 6400)]
    with grpc.insecure_channel(server.address) as ch:
        expected = [r.alternatives[0].transcript for resp in pb_grpc.RecognizerStub(ch).StreamingRecognize(iter(reqs))
                    for r in resp.results if r.is_final]
    refs = [t for _, t in clean_utterances[:2]]
    assert len(expected) == 2 and jiwer.wer(refs, expected) <= 0.5
    return path, expected


def cli(*args, timeout=120):
    return subprocess.run(SA + list(args), capture_output=True, text=True, timeout=timeout)


def test_sync_client_stream_file_and_recognize(server, two_utterances, tiny):
    path, refs = two_utterances
    with SpeechClient(server.address) as client:
        results = list(client.stream_file(path, interim_results=True))
        unary = client.recognize(path)
        models = client.list_models()
        info = client.get_model("tiny@1")
    finals = [r for r in results if r.is_final]
    assert [r.model for r in results][0] == "tiny@1"
    assert [r.transcript for r in finals] == refs
    assert any(not r.is_final for r in results)
    assert [w.word for w in finals[0].words] == finals[0].transcript.split()
    assert [r.transcript for r in unary] == [r.transcript for r in finals]
    # the shipped model is always listed (and whisper-tiny-en once built from the bundled weights on this machine)
    assert [m.ref for m in models if m.ref != "whisper-tiny-en@1"] == ["base-en@1", "tiny@1"]
    assert [m.ref for m in models if m.is_default] == ["tiny@1"]  # the server's --default-model
    assert info.ref == "tiny@1" and info.architecture == "conformer-ctc"
    files = [f for f in (tiny.store / "tiny" / "1").iterdir() if f.name != "model.json"]
    assert info.adapter_base == "" and info.package_bytes == sum(f.stat().st_size for f in files) > 0


def test_async_client(server, two_utterances):
    path, refs = two_utterances

    async def main():
        async with AsyncSpeechClient(server.address) as client:
            finals = [r.transcript async for r in client.stream_file(path) if r.is_final]
            models = await client.list_models()
            return finals, models

    finals, models = asyncio.run(main())
    assert finals == refs and [m.name for m in models if m.name != "whisper-tiny-en"] == ["base-en", "tiny"]


def test_client_errors_carry_code_and_message(server, two_utterances):
    path, _ = two_utterances
    with SpeechClient(server.address) as client:
        with pytest.raises(SpeechAdaptError) as e:
            list(client.stream_file(path, model="ghost"))
    assert e.value.code == "NOT_FOUND" and "ghost" in str(e.value)


def test_cli_transcribe_json_contract(server, two_utterances):
    path, refs = two_utterances
    proc = cli("transcribe", str(path), "--server", server.address, "--json", "--interim")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(set(d) == {"file", "is_final", "transcript", "confidence", "stability", "words"} for d in lines)
    finals = [d for d in lines if d["is_final"]]
    assert [d["transcript"] for d in finals] == refs
    assert all(set(w) == {"word", "start", "end"} and w["start"] < w["end"] for d in finals for w in d["words"])
    assert any(not d["is_final"] for d in lines) and {d["file"] for d in lines} == {str(path)}


def test_cli_transcribe_human_and_errors(server, two_utterances):
    path, refs = two_utterances
    proc = cli("transcribe", str(path), "--server", server.address)
    assert proc.returncode == 0, proc.stderr
    assert [line.split("] ", 1)[1] for line in proc.stdout.splitlines()] == refs
    bad = cli("transcribe", str(path), "--server", server.address, "--model", "tiny@9")
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr and "no version 9" in bad.stderr
    missing = cli("transcribe", "/nonexistent.wav", "--server", server.address)
    assert missing.returncode == 2 and "nonexistent.wav" in missing.stderr


def test_cli_models_list(server):
    proc = cli("models", "list", "--server", server.address, "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {d["name"]: d for d in (json.loads(line) for line in proc.stdout.splitlines())}
    assert sorted(set(listed) - {"whisper-tiny-en"}) == ["base-en", "tiny"]  # the store's model and the shipped one
    m = listed["tiny"]
    assert (m["name"], m["version"], m["architecture"]) == ("tiny", 1, "conformer-ctc")
    human = cli("models", "list", "--server", server.address)
    assert "tiny" in human.stdout and "conformer-ctc" in human.stdout


def test_cli_eval_json(tiny):
    proc = cli("eval", "--model", "tiny", "--model-store", str(tiny.store), "--manifest", str(tiny.dev_manifest), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert set(res) == {"wer", "cer", "utterances", "audio_seconds", "rtf"}
    assert res["utterances"] == 20 and res["wer"] <= 0.3 and res["cer"] < res["wer"] + 0.1 and 0 < res["rtf"] < 1
    by_path = cli("eval", "--model", str(tiny.store / "tiny" / "1"), "--manifest", str(tiny.dev_manifest), "--json")
    assert json.loads(by_path.stdout)["wer"] == res["wer"]
    bad = cli("eval", "--model", "ghost", "--model-store", str(tiny.store), "--manifest", str(tiny.dev_manifest))
    assert bad.returncode == 2 and "ghost" in bad.stderr


def test_cli_serve_starts_a_real_server(tiny, two_utterances):
    path, refs = two_utterances
    proc = subprocess.Popen(SA + ["serve", "--port", "0", "--model-store", str(tiny.store), "--default-model", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        for line in proc.stdout:
            if "listening on" in line:
                break
        address = line.strip().rsplit(" ", 1)[-1]
        assert address.startswith("127.0.0.1:"), line
        with SpeechClient(address) as client:
            finals = [r.transcript for r in client.stream_file(path) if r.is_final]
        assert finals == refs
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
