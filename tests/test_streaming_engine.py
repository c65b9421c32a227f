"""The streaming engine: batched chunks across streams, many concurrent streams, resources freed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import ServerThread
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

BASE = Path(__file__).resolve().parents[1] / "asr" / "models" / "base-en"


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    """Five synthesized sentences of the 1,000 most common words, int16 at 16 kHz, with a second of silence after."""
    from speechadapt.training.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("sentences")
    synthesize(SynthConfig(out_dir=out, voices=["en-us", "en-gb"], variants=["m6", "f5"], count=5, vocab_size=1000, seed=77,
                           quiet=True))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    audio = []
    for r in rows:
        samples, rate = sf.read(out / r["audio"], dtype="int16")
        assert rate == 16000
        audio.append(np.concatenate([samples, np.zeros(16000, np.int16)]))
    return audio


def test_batched_forward_passes_match_stream_by_stream(sentences):
    from speechadapt.asr import Stream, load_model
    from speechadapt.asr.streaming import decode_streams

    model = load_model(BASE)

    def run(batched: bool):
        streams = [Stream(model, 16000) for _ in sentences]
        for s, a in zip(streams, sentences):
            s.accept_waveform(a.astype(np.float32) / 32768)
            s.input_finished()
        passes = 0
        if batched:
            while any(s.is_ready() for s in streams):
                passes += decode_streams(streams)
        else:
            for s in streams:
                s.decode()
        return streams, passes

    solo, _ = run(False)
    together, passes = run(True)
    chunks = sum(len(s._decoder.utterance_logits()) for s in solo) // model.net.cfg.chunk_frames
    assert passes < chunks  # streams shared forward passes
    for a, b in zip(solo, together):
        la, lb = a._decoder.utterance_logits(), b._decoder.utterance_logits()
        assert la.shape == lb.shape
        assert (la - lb).abs().max().item() < 1e-4
        assert a.final_result()[0].text == b.final_result()[0].text


async def _stream(address: str, audio: np.ndarray, chunk_ms: int = 100) -> list[str]:
    config = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000)

    def requests():
        yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=config, interim_results=True))
        step = 16 * chunk_ms
        for i in range(0, len(audio), step):
            yield pb.StreamingRecognizeRequest(audio_content=audio[i : i + step].tobytes())

    async with grpc.aio.insecure_channel(address) as ch:
        finals = []
        async for resp in pb_grpc.RecognizerStub(ch).StreamingRecognize(requests(), timeout=300):
            finals += [r.alternatives[0].transcript for r in resp.results if r.is_final]
        return finals


def test_fifty_concurrent_streams_complete_correctly_and_share_batches(tmp_path, sentences):
    srv = ServerThread(model_store=tmp_path / "store", max_streams=64, batch_max=32, batch_wait_ms=10, default_model="base-en")
    try:
        expected = [srv.call(_stream(srv.address, a)) for a in sentences]  # one at a time
        assert all(e and any(e) for e in expected)
        solo_stats = srv.server.batcher.stats.mean_batch
        assert solo_stats == pytest.approx(1.0)

        async def together():
            return await asyncio.gather(*(_stream(srv.address, sentences[i % 5]) for i in range(50)))

        got = srv.call(together(), timeout=600)
        assert [g == expected[i % 5] for i, g in enumerate(got)] == [True] * 50
        assert srv.server.batcher.stats.mean_batch > 1.5
        assert srv.server.batcher.active == 0 and srv.server.admission.active == 0
    finally:
        srv.stop()


@pytest.mark.parametrize("vad, finals", [(None, 2), (1, 1)])
def test_the_vad_must_agree_before_an_utterance_ends(sentences, vad, finals):
    """Two sentences with 1.5 s of faint noise between: the decoder hears no words in the noise, so without a VAD
    the first sentence ends in it; webrtcvad hears sound there and holds the utterance open (up to twice
    stop_history_ms of decoder silence)."""
    from speechadapt.asr import EndpointConfig, Stream, load_model

    model = load_model(BASE)
    # faint (-50 dBFS): at -40 dBFS base-en (trained with noise) starts hearing fricatives in white noise
    noise = np.random.default_rng(0).standard_normal(int(1.5 * 16000)).astype(np.float32) * 0.003
    a, b = (s.astype(np.float32)[: -16000] / 32768 for s in sentences[:2])
    audio = np.concatenate([a, noise, b, np.zeros(16000, np.float32)])
    stream = Stream(model, 16000, EndpointConfig(vad=vad))
    got = []
    for i in range(0, len(audio), 1600):
        stream.accept_waveform(audio[i : i + 1600])
        while stream.is_ready():
            stream.decode_chunk()
            if stream.is_endpoint():
                got.append(stream.final_result()[0].text)
                stream.reset()
    stream.input_finished()
    stream.decode()
    if stream.result().text:
        got.append(stream.final_result()[0].text)
    assert len(got) == finals, got


def test_incremental_and_whole_utterance_decoding_agree(sentences):
    """Chunk by chunk with cached context vs one pass with the chunk mask: logits within 1e-4, same final text."""
    from speechadapt.asr import EndpointConfig, Stream, load_model

    model = load_model(BASE)
    for a in sentences:
        samples = a.astype(np.float32) / 32768
        stream = Stream(model, 16000, EndpointConfig(enabled=False))
        for i in range(0, len(samples), 1234):  # odd piece sizes
            stream.accept_waveform(samples[i : i + 1234])
            stream.decode()
        stream.input_finished()
        stream.decode()
        whole = model.logits(samples)
        inc = stream._decoder.utterance_logits()
        assert inc.shape == whole.shape
        assert (inc - whole).abs().max().item() < 1e-4
        assert stream.final_result()[0].text == model.transcribe(samples).text
