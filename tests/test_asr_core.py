"""asr building blocks: streaming equals whole-signal processing, package integrity, references."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechadapt.asr.audio import StreamingResampler, load_audio, pcm16_to_float, resample
from speechadapt.asr.decoding import GreedyCTC, greedy_decode
from speechadapt.asr.features import FeatureConfig, StreamingFbank, fbank
from speechadapt.asr.model import ConformerCTC, ModelConfig
from speechadapt.asr.package import PackageError, load_package, save_package
from speechadapt.asr.store import ModelNotFound, ModelStore, parse_ref
from speechadapt.asr.text import CharTokenizer, normalize_text


def _pieces(x, rng):
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        yield x[i : i + n]
        i += n


@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (22050, 16000), (48000, 16000), (16000, 8000)])
def test_streaming_resampler_equals_whole_signal(orig, new):
    rng = np.random.default_rng(orig)
    x = rng.standard_normal(orig + 321).astype(np.float32)
    r = StreamingResampler(orig, new)
    y = np.concatenate([r.process(p) for p in _pieces(x, rng)] + [r.flush()])
    ref = resample(x, orig, new)
    assert len(y) == len(ref)
    assert np.abs(y - ref).max() < 1e-5


def test_streaming_fbank_equals_whole_signal():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)
    s = StreamingFbank(FeatureConfig())
    y = torch.cat([s.accept(p) for p in _pieces(x, rng)])
    ref = fbank(x, FeatureConfig())
    assert y.shape == ref.shape == (198, 80)
    assert (y - ref).abs().max() < 1e-4


def test_chunked_encoder_equals_masked_whole_pass():
    torch.manual_seed(0)
    net = ConformerCTC(ModelConfig(d_model=64, num_layers=2, d_ffn=128)).eval()
    feats = torch.randn(1, 4 * 29, 80)
    with torch.no_grad():
        whole, _ = net(feats, torch.tensor([feats.shape[1]]), net.cfg.streaming())
        ctx = net.make_context()
        step = net.cfg.chunk_frames * net.cfg.stack
        parts = [net.forward_chunk(feats[:, i : i + step], ctx) for i in range(0, feats.shape[1], step)]
    assert (torch.cat(parts, 1) - whole).abs().max() < 1e-4


def test_pcm16_and_downmix():
    stereo = np.array([[1000, 3000], [-2000, 0]], dtype="<i2")
    x = pcm16_to_float(stereo.tobytes(), channels=2)
    np.testing.assert_allclose(x, [2000 / 32768, -1000 / 32768])
    with pytest.raises(ValueError, match="not a multiple of 4"):
        pcm16_to_float(b"\x00" * 6, channels=2)


def test_load_audio_resamples_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.wav", np.stack([tone, tone], 1), 44100)
    x = load_audio(tmp_path / "a.wav", 16000)
    assert len(x) == 16000 and abs(np.abs(x).max() - 0.5) < 0.01
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot decode"):
        load_audio(tmp_path / "bad.wav")


def test_text_normalisation_and_tokenizer():
    assert normalize_text("Hello, World! It's 42.") == "hello world it's forty two"
    assert normalize_text("'quoted' 1999") == "quoted one thousand nine hundred ninety nine"
    tok = CharTokenizer()
    assert tok.decode(tok.encode("it's ok")) == "it's ok"
    with pytest.raises(ValueError, match="outside the model's alphabet"):
        tok.encode("café")


def test_greedy_ctc_words_times_and_incremental_equality():
    tok = CharTokenizer()
    seq = [0, 10, 10, 0, 11, 1, 1, 0, 11, 0, 0]  # "hi i" (h=10, i=11)
    logits = torch.full((len(seq), len(tok)), -5.0)
    logits[torch.arange(len(seq)), torch.tensor(seq)] = 5.0
    hyp = greedy_decode(logits, tok, 0.04)
    assert hyp.text == "hi i"
    assert [(w.word, round(w.start, 2), round(w.end, 2)) for w in hyp.words] == [("hi", 0.04, 0.2), ("i", 0.32, 0.36)]
    dec = GreedyCTC(tok, 0.04)
    dec.update(logits[:2])  # split inside the repeated "h": must not emit it twice
    dec.update(logits[2:])
    assert dec.hypothesis() == hyp


@pytest.fixture
def package(tmp_path):
    net = ConformerCTC(ModelConfig(d_model=64, num_layers=1, d_ffn=128))
    save_package(tmp_path / "m" / "1", net, CharTokenizer(), FeatureConfig(), name="m")
    return tmp_path / "m" / "1"


def test_package_roundtrip_and_tamper_detection(package):
    card, net, tok, feats = load_package(package)
    assert card.name == "m" and card.architecture == "conformer-ctc" and len(tok) == 29
    assert json.loads((package / "model.json").read_text())["files"]["weights.safetensors"]["sha256"]
    data = bytearray((package / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (package / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        load_package(package)


def test_package_rejects_pickles_and_bad_cards(package):
    card = json.loads((package / "model.json").read_text())
    card["files"]["../evil.pt"] = {"sha256": "0"}
    (package / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match="outside the package"):
        load_package(package)
    (package / "model.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(package)


def test_package_never_unpickles(package, tmp_path):
    """A pickle in place of the weights, even with a matching sha256, is refused, not executed."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import hashlib
    import pickle

    blob = pickle.dumps(Evil())
    (package / "weights.safetensors").write_bytes(blob)
    card = json.loads((package / "model.json").read_text())
    card["files"]["weights.safetensors"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (package / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match="not a valid safetensors"):
        load_package(package)
    assert not marker.exists()


def test_store_references(package):
    store = ModelStore(package.parent.parent, builtin=None)
    assert store.resolve("m").version == 1
    assert store.resolve("m@1").path == package
    with pytest.raises(ModelNotFound, match="no version 2"):
        store.resolve("m@2")
    with pytest.raises(ModelNotFound, match="not found"):
        store.resolve("other")
    for bad in ("../m", "a/b", "m@x", "m@0", "", ".."):
        with pytest.raises(ValueError):
            parse_ref(bad)
