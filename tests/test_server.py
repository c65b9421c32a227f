"""The gRPC server end to end on loopback, with a real model and real (synthesized) speech."""

from __future__ import annotations

import io
import time

import grpc
import jiwer
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import with_silence
from speechadapt.v1 import adaptation_pb2, adaptation_pb2_grpc, models_pb2, models_pb2_grpc
from speechadapt.v1 import recognizer_pb2 as pb
from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

R = pb.StreamingRecognizeRequest


def config(**kw) -> pb.RecognitionConfig:
    kw.setdefault("encoding", pb.LINEAR16)
    kw.setdefault("sample_rate_hertz", 16000)
    return pb.RecognitionConfig(**kw)


def requests(audio: bytes, cfg=None, chunk=3200, interim=False, single=False):
    yield R(streaming_config=pb.StreamingRecognitionConfig(config=cfg or config(), interim_results=interim, single_utterance=single))
    for i in range(0, len(audio), chunk):
        yield R(audio_content=audio[i : i + chunk])


def stream(server, reqs, timeout=120):
    with grpc.insecure_channel(server.address) as ch:
        return list(pb_grpc.RecognizerStub(ch).StreamingRecognize(reqs, timeout=timeout))


def finals(responses):
    return [r for resp in responses for r in resp.results if r.is_final]


def error_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def assert_serves(server, dev_utterances):
    """The server still transcribes a good stream correctly."""
    samples, text = dev_utterances[0]
    got = " ".join(f.alternatives[0].transcript for f in finals(stream(server, requests(samples.tobytes()))))
    assert jiwer.wer(text, got) <= 0.5, (text, got)


def test_continuous_stream_gives_a_final_per_utterance_with_words(server, dev_utterances):
    utts = dev_utterances[:4]
    audio = with_silence(utts)
    resps = stream(server, requests(audio.tobytes(), config(enable_word_time_offsets=True), interim=True))
    assert resps[0].model == "tiny@1"
    fins = finals(resps)
    assert len(fins) == len(utts), [f.alternatives[0].transcript for f in fins]
    refs = [t for _, t in utts]
    hyps = [f.alternatives[0].transcript for f in fins]
    assert jiwer.wer(refs, hyps) <= 0.25, list(zip(refs, hyps))
    interim = [r for resp in resps for r in resp.results if not r.is_final]
    assert interim and all(0.0 <= r.stability <= 1.0 for r in interim)
    prev_end = 0.0
    for f in fins:
        alt = f.alternatives[0]
        assert 0 < alt.confidence <= 1
        assert [w.word for w in alt.words] == alt.transcript.split()
        for w in alt.words:
            start, end = w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9
            assert prev_end <= start < end <= f.result_end_offset.ToNanoseconds() / 1e9 + 1e-6
            prev_end = start
    assert fins[-1].result_end_offset.ToNanoseconds() / 1e9 <= len(audio) / 16000 + 1e-6


def test_chunk_size_does_not_change_the_result(server, clean_utterances):
    audio = with_silence(clean_utterances[2:4]).tobytes()
    a = [f.alternatives[0].transcript for f in finals(stream(server, requests(audio, chunk=320)))]
    b = [f.alternatives[0].transcript for f in finals(stream(server, requests(audio, chunk=64000)))]
    assert a == b and len(a) == 2


def test_single_utterance_ends_the_stream(server, clean_utterances):
    resps = stream(server, requests(with_silence(clean_utterances[:3]).tobytes(), single=True))
    events = [r.speech_event_type for r in resps]
    assert pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE in events
    assert len(finals(resps)) == 1
    assert jiwer.wer(clean_utterances[0][1], finals(resps)[0].alternatives[0].transcript) <= 0.5


def test_endpointing_disabled_gives_one_final(server, clean_utterances):
    cfg = config(endpointing=pb.EndpointingConfig(disabled=True))
    fins = finals(stream(server, requests(with_silence(clean_utterances[:2]).tobytes(), cfg)))
    assert len(fins) == 1
    assert len(fins[0].alternatives[0].transcript.split()) >= len((clean_utterances[0][1] + " " + clean_utterances[1][1]).split()) - 2


def test_resampled_and_multichannel_input(server, tiny, clean_utterances):
    import torch
    import torchaudio.functional as AF

    from speechadapt.asr import load_model
    from speechadapt.asr.audio import resample

    samples, text = clean_utterances[1]
    x = torch.from_numpy(samples.astype(np.float32) / 32768)
    to_pcm = lambda y: (np.clip(y, -1, 1) * 32767).astype(np.int16)
    pcm48 = to_pcm(AF.resample(x, 16000, 48000).numpy())
    got48 = finals(stream(server, requests(pcm48.tobytes(), config(sample_rate_hertz=48000))))
    assert jiwer.wer(text, got48[0].alternatives[0].transcript) <= 0.25
    stereo = np.stack([samples, samples], 1)
    got2 = finals(stream(server, requests(stereo.tobytes(), config(audio_channel_count=2))))
    assert got2[0].alternatives[0].transcript == text
    # 8 kHz (telephone band) loses what the model was trained on; the server must give exactly
    # what the model gives on the same audio resampled in one piece.
    pcm8 = to_pcm(AF.resample(x, 16000, 8000).numpy())
    got8 = " ".join(f.alternatives[0].transcript for f in finals(stream(server, requests(pcm8.tobytes(), config(sample_rate_hertz=8000)))))
    model = load_model("tiny", store=tiny.store)
    assert got8 == model.transcribe(resample(pcm8.astype(np.float32) / 32768, 8000, 16000)).text

def _wav_bytes(samples, rate, fmt="WAV", subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_wav_container_streams_in_arbitrary_chunks(server, clean_utterances):
    samples, text = clean_utterances[2]
    wav = _wav_bytes(samples, 16000)
    got = finals(stream(server, requests(wav, config(encoding=pb.WAV, sample_rate_hertz=0), chunk=333)))
    assert jiwer.wer(text, got[0].alternatives[0].transcript) <= 0.5


def test_unary_recognize_linear16_wav_and_flac(server, clean_utterances):
    samples, text = clean_utterances[3]
    import torch
    import torchaudio.functional as AF

    x44 = AF.resample(torch.from_numpy(samples.astype(np.float32) / 32768), 16000, 44100).numpy()
    flac = _wav_bytes(np.stack([x44, x44], 1), 44100, fmt="FLAC")
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        a = stub.Recognize(pb.RecognizeRequest(config=config(), audio_content=samples.tobytes()))
        b = stub.Recognize(pb.RecognizeRequest(config=config(encoding=pb.WAV, sample_rate_hertz=0), audio_content=_wav_bytes(samples, 16000)))
        c = stub.Recognize(pb.RecognizeRequest(config=config(encoding=pb.FLAC, sample_rate_hertz=44100, audio_channel_count=2), audio_content=flac))
    assert a.model == "tiny@1" and abs(a.total_audio.ToNanoseconds() / 1e9 - len(samples) / 16000) < 1e-3
    assert a.results[0].alternatives[0].transcript == b.results[0].alternatives[0].transcript
    for r in (a, c):
        assert jiwer.wer(text, " ".join(x.alternatives[0].transcript for x in r.results)) <= 0.5


def test_model_selection(server, clean_utterances):
    samples, _ = clean_utterances[0]
    assert stream(server, requests(samples.tobytes(), config(model="tiny@1")))[0].model == "tiny@1"
    code, msg = error_of(lambda: stream(server, requests(samples.tobytes(), config(model="nope"))))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg and "tiny" in msg
    code, msg = error_of(lambda: stream(server, requests(samples.tobytes(), config(model="tiny@7"))))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 7" in msg
    for bad in ("../tiny", "a/b", "..", "tiny@x"):
        code, msg = error_of(lambda: stream(server, requests(samples.tobytes(), config(model=bad))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, msg)


BAD_STREAMS = {
    "audio before config": (lambda a: iter([R(audio_content=a[:3200])] ), "first message must carry streaming_config"),
    "config twice": (lambda a: iter([R(streaming_config=pb.StreamingRecognitionConfig(config=config())), R(audio_content=a[:3200]),
                                      R(streaming_config=pb.StreamingRecognitionConfig(config=config()))]), "only be sent once"),
    "no encoding": (lambda a: requests(a, config(encoding=pb.ENCODING_UNSPECIFIED)), "encoding is required"),
    "unknown encoding": (lambda a: requests(a, config(encoding=42)), "not supported"),
    "FLAC streaming": (lambda a: requests(a, config(encoding=pb.FLAC)), "Recognize only"),
    "rate zero": (lambda a: requests(a, config(sample_rate_hertz=0)), "sample_rate_hertz is required"),
    "rate negative": (lambda a: requests(a, config(sample_rate_hertz=-16000)), "8000..48000"),
    "rate too high": (lambda a: requests(a, config(sample_rate_hertz=96000)), "8000..48000"),
    "channels": (lambda a: requests(a, config(audio_channel_count=9)), "audio_channel_count"),
    "odd bytes": (lambda a: requests(a[:3201], chunk=3201), "whole 16-bit samples"),
    "empty stream": (lambda a: iter([]), "empty stream"),
    "config only": (lambda a: iter([R(streaming_config=pb.StreamingRecognitionConfig(config=config()))]), "no audio received"),
    "alternatives range": (lambda a: requests(a, config(max_alternatives=11)), "0..10"),
    "phrase alphabet": (lambda a: requests(a, config(speech_contexts=[pb.SpeechContext(phrases=["東京"])])), "speech_contexts[0].phrases[0]"),
    "phrase boost": (lambda a: requests(a, config(speech_contexts=[pb.SpeechContext(phrases=["stop"], boost=50)])), "boost must be in"),
    "endpointing": (lambda a: requests(a, config(endpointing=pb.EndpointingConfig(stop_history_ms=50))), "stop_history_ms"),
    "endpointing max": (lambda a: requests(a, config(endpointing=pb.EndpointingConfig(max_utterance_ms=999999))), "max_utterance_ms"),
    "language": (lambda a: requests(a, config(language_code="fr-FR")), "language_code"),
    "not a WAV": (lambda a: requests(a, config(encoding=pb.WAV, sample_rate_hertz=0)), "RIFF"),
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_is_rejected_and_server_keeps_serving(server, clean_utterances, case):
    make, expected = BAD_STREAMS[case]
    audio = clean_utterances[0][0].tobytes()
    code, msg = error_of(lambda: stream(server, make(audio)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert expected in msg
    assert_serves(server, clean_utterances)


def test_oversized_message_is_resource_exhausted(make_server, clean_utterances):
    srv = make_server(max_message_bytes=64 * 1024)
    big = np.zeros(40000, dtype=np.int16).tobytes()  # 80 KB in one message
    code, msg = error_of(lambda: stream(srv, requests(big, chunk=len(big))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
    assert_serves(srv, clean_utterances)


def _wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_admission_limit_and_disconnect_frees_the_session(make_server, clean_utterances):
    srv = make_server(max_streams=1)
    audio = clean_utterances[0][0].tobytes()
    release = __import__("threading").Event()

    def held():
        yield R(streaming_config=pb.StreamingRecognitionConfig(config=config()))
        yield R(audio_content=audio[:3200])
        release.wait(60)

    ch = grpc.insecure_channel(srv.address)
    call = pb_grpc.RecognizerStub(ch).StreamingRecognize(held())
    assert _wait_until(lambda: srv.server.admission.active == 1 and srv.server.batcher.active == 1)
    code, msg = error_of(lambda: stream(srv, requests(audio)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in msg
    call.cancel()  # the client goes away mid-stream
    release.set()
    ch.close()
    assert _wait_until(lambda: srv.server.admission.active == 0 and srv.server.batcher.active == 0), \
        "the abandoned session was not freed"
    assert_serves(srv, clean_utterances)


def test_models_service(server):
    with grpc.insecure_channel(server.address) as ch:
        stub = models_pb2_grpc.ModelsStub(ch)
        models = stub.ListModels(models_pb2.ListModelsRequest()).models
        m = stub.GetModel(models_pb2.GetModelRequest(model="tiny"))
        code, _ = error_of(lambda: stub.GetModel(models_pb2.GetModelRequest(model="ghost")))
        bad, _ = error_of(lambda: stub.GetModel(models_pb2.GetModelRequest(model="../x")))
    tiny = [x for x in models if x.name == "tiny"][0]
    assert (tiny.version, tiny.architecture, tiny.sample_rate_hertz, tiny.source) == (1, "conformer-ctc", 16000, "store")
    assert tiny.is_default and 0 <= tiny.metrics["dev_wer"] < 0.5 and tiny.num_parameters > 100_000
    assert tiny.create_time.seconds > 0 and tiny.lineage.strategy == "pretrain"
    assert m == tiny
    assert code == grpc.StatusCode.NOT_FOUND and bad == grpc.StatusCode.INVALID_ARGUMENT


def test_adaptation_service_answers(server):
    with grpc.insecure_channel(server.address) as ch:
        stub = adaptation_pb2_grpc.AdaptationStub(ch)
        stub.ListJobs(adaptation_pb2.ListJobsRequest())
        code, msg = error_of(lambda: stub.GetJob(adaptation_pb2.GetJobRequest(id="job-none")))
        assert code == grpc.StatusCode.NOT_FOUND and "job-none" in msg
        code, msg = error_of(lambda: stub.SubmitJob(adaptation_pb2.SubmitJobRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec" in msg


def test_unusable_state_dir_refuses_adaptation_and_keeps_recognizing(make_server, tmp_path, clean_utterances):
    (tmp_path / "file").write_text("not a folder")
    srv = make_server(state_dir=tmp_path / "file" / "state")
    with grpc.insecure_channel(srv.address) as ch:
        code, msg = error_of(lambda: adaptation_pb2_grpc.AdaptationStub(ch).ListJobs(adaptation_pb2.ListJobsRequest()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--state-dir" in msg
    assert_serves(srv, clean_utterances)


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="speechadapt.v1.Recognizer"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"speechadapt.v1.Recognizer", "speechadapt.v1.Models", "speechadapt.v1.Adaptation", "grpc.health.v1.Health"} <= names


def test_tampered_model_is_refused_and_others_still_served(make_server, tiny, tmp_path, clean_utterances):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny.store, store)
    shutil.copytree(store / "tiny" / "1", store / "tiny" / "2")
    w = store / "tiny" / "2" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 1
    w.write_bytes(bytes(data))
    srv = make_server(model_store=store)
    samples = clean_utterances[0][0].tobytes()
    code, msg = error_of(lambda: stream(srv, requests(samples, config(model="tiny@2"))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in msg
    assert stream(srv, requests(samples, config(model="tiny@1")))[0].model == "tiny@1"


def test_tls(make_server, tmp_path, clean_utterances):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    srv = make_server(tls_cert=cert, tls_key=key)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    samples, text = clean_utterances[0]
    with grpc.secure_channel(f"localhost:{srv.port}", creds) as ch:
        resps = list(pb_grpc.RecognizerStub(ch).StreamingRecognize(requests(samples.tobytes()), timeout=60))
    assert jiwer.wer(text, finals(resps)[0].alternatives[0].transcript) <= 0.5
    with grpc.insecure_channel(srv.address) as ch:  # plaintext to a TLS port fails
        code, _ = error_of(lambda: list(pb_grpc.RecognizerStub(ch).StreamingRecognize(requests(samples.tobytes()), timeout=10)))
    assert code == grpc.StatusCode.UNAVAILABLE
