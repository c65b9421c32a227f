"""The shipped base model (asr/models/base-en): it loads and verifies, a tampered copy is refused, and a
server with an empty store serves it to transcribe speakers it never heard."""

from __future__ import annotations

import json
import shutil

import pytest

from speechadapt.asr.package import CARD, SHIPPED_LIMIT_BYTES, WEIGHTS, PackageError, load_package, read_card, shipped_bytes
from speechadapt.asr.store import BUILTIN_DIR

BASE = BUILTIN_DIR / "base-en"


def test_shipped_package_loads_and_is_small():
    assert (BASE / CARD).is_file(), "the base-en package is missing from asr/models/base-en"
    card, net, tokenizer, features = load_package(BASE)
    assert card.name == "base-en" and card.architecture
    size = shipped_bytes(BASE)  # lm/ too, when it has one
    assert size <= SHIPPED_LIMIT_BYTES, f"base-en adds {size / 2**20:.1f} MiB to the wheel; the limit is 20 MiB"
    # the card documents how it was made and how well it does
    assert card.lineage.get("command"), "model.json lineage must hold the command that reproduces the model"
    assert card.metrics.get("per_accent"), "model.json metrics must hold the per-accent benchmark"
    assert (BASE / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize("target", [WEIGHTS, CARD])
def test_tampered_copy_is_refused(tmp_path, target):
    copy = tmp_path / "base-en"
    shutil.copytree(BASE, copy)
    if target == WEIGHTS:
        data = bytearray((copy / WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the weights
        (copy / WEIGHTS).write_bytes(bytes(data))
    else:  # a card that claims different weights
        card = json.loads((copy / CARD).read_text())
        card["files"][WEIGHTS]["sha256"] = "0" * 64
        (copy / CARD).write_text(json.dumps(card))
    with pytest.raises(PackageError, match="sha256"):
        load_package(copy)
    read_card(BASE)  # the original is untouched


@pytest.mark.slow
def test_empty_store_serves_base_en_to_unseen_speakers(tmp_path):
    """`speechadapt serve --default-model base-en` with an empty store: base-en is listed, is the default, and transcribes unseen
    sentences spoken by en-us/en-gb variants outside its training speakers. The accuracy target (15% WER)
    is the benchmark's (bench/base_model.py; base-en@1 measures 31% there, above it); this guards
    against a broken model with a looser bound."""
    from conftest import ServerThread
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.client import SpeechClient
    from speechadapt.training.synth import SynthConfig, synthesize

    card = read_card(BASE)
    unseen = [v for v in ("m7", "f5", "m8", "m6") if not any(sp.endswith("+" + v) for sp in card.lineage.get("speakers", []))]
    corpus = tmp_path / "unseen"
    synthesize(SynthConfig(out_dir=corpus, voices=["en-us", "en-gb"], variants=unseen[:2], count=16, seed=4242,
                           vocab_size=card.lineage.get("vocab_size"), jobs=2, quiet=True))
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]

    store = tmp_path / "store"
    store.mkdir()
    server = ServerThread(model_store=store, default_model="base-en")
    try:
        with SpeechClient(server.address) as client:
            models = client.list_models()
            assert "base-en" in [m.name for m in models] and [m.name for m in models if m.is_default] == ["base-en"]
            hyps = []
            for row in rows:
                results = client.recognize(corpus / row["audio"])
                hyps.append(" ".join(r.alternatives[0].transcript for r in results if r.alternatives).strip())
    finally:
        server.stop()
    wer, _ = error_rates([r["text"] for r in rows], hyps)
    assert wer <= 0.45, f"base-en WER {wer:.1%} on unseen speakers: {list(zip([r['text'] for r in rows], hyps))[:4]}"
