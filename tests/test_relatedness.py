"""Relatedness before training: the feature distance on real (synthesized) audio, and the warnings a job emits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from speechadapt.training.relatedness import (FAR_MIN, FrameStats, Relatedness, feature_distances, measure,
                                              symmetric_kl, warnings_for)


def _rel(**kw) -> Relatedness:
    base = dict(base_target_wer=0.4, base_source_wer=0.1, ratio=0.25, feature_distance=0.05, source_spread=0.01,
                target_seconds=300.0)
    return Relatedness(**{**base, **kw})


def _telephone(src: Path, out: Path, limit: int = 30) -> Path:
    """The manifest's audio through an 8 kHz channel (as FSDD's recordings): nothing above 4 kHz."""
    import torch
    import torchaudio.functional as AF

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, line in enumerate(src.read_text().splitlines()[:limit]):
        d = json.loads(line)
        x, rate = sf.read(src.parent / d["audio"], dtype="float32")
        y = AF.resample(AF.resample(torch.from_numpy(x), rate, 8000), 8000, rate).numpy()
        sf.write(out / f"{i}.wav", y, rate)
        rows.append(json.dumps({"audio": f"{i}.wav", "text": d["text"]}))
    (out / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return out / "manifest.jsonl"


def test_symmetric_kl_is_zero_for_equal_gaussians_and_grows_with_the_shift():
    m, v = np.zeros(4), np.ones(4)
    assert symmetric_kl((m, v), (m, v)) == 0
    assert 0 < symmetric_kl((m, v), (m + 0.5, v)) < symmetric_kl((m, v), (m + 1, v))
    assert symmetric_kl((m, v), (m, 2 * v)) == symmetric_kl((m, 2 * v), (m, v))


def test_frame_statistics_of_two_halves_add_up_to_the_whole():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (50, 4)), rng.normal(-1.0, 0.5, (30, 4))
    halves, whole = FrameStats(), FrameStats()
    halves.add(a)
    other = FrameStats()
    other.add(b)
    whole.add(np.concatenate([a, b]))
    merged = halves + other
    assert merged.n == 80 and all(np.allclose(x, y) for x, y in zip(merged.gaussian(), whole.gaussian()))
    assert (FrameStats() + other) is other and (other + FrameStats()) is other


def test_same_voices_are_near_and_a_telephone_channel_is_far(tiny, tmp_path):
    near, spread = feature_distances(tiny.train_manifest, tiny.dev_manifest)
    far, _ = feature_distances(_telephone(tiny.dev_manifest, tmp_path / "tel"), tiny.dev_manifest)
    print(f"same voices {near:.3f}, telephone {far:.3f}, source spread {spread:.4f}")
    assert 0 <= spread < FAR_MIN and 0 < near < FAR_MIN < far and far > 10 * max(near, spread)

    r = measure(0.95, 0.1, tmp_path / "tel" / "manifest.jsonl", tiny.dev_manifest, target_seconds=40.0)
    assert r.far and r.ratio == 0.1 / 0.95 and r.feature_distance == round(far, 4)
    assert [w.split(":")[0] for w in r.warnings] == ["little target data", "negative transfer likely"]
    assert "40 s of audio" in r.warnings[0] and "95% WER" in r.warnings[1]


def test_unreadable_audio_leaves_the_distance_unmeasured(tiny, tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({"audio": "missing.wav", "text": "go"}) + "\n")
    r = measure(0.5, 0.2, bad, tiny.dev_manifest, target_seconds=600.0)
    assert r.feature_distance == -1 and not r.far and r.warnings == []
    assert "feature distance" not in r.summary() and "relatedness 0.40" in r.summary()


def test_warnings_say_what_stands_out():
    assert warnings_for(_rel()) == []
    assert warnings_for(_rel(base_target_wer=0.03))[0].startswith("little to gain: the base model already gets 3.0%")
    assert warnings_for(_rel(base_target_wer=0.08, base_source_wer=0.1))[0].startswith("the target is no harder")
    far = warnings_for(_rel(feature_distance=2.0))
    assert len(far) == 1 and far[0].startswith("the target audio is far") and "200 times" in far[0]
    # far needs both: many times the source's spread and over FAR_MIN
    assert warnings_for(_rel(feature_distance=0.5, source_spread=0.001)) == []
    assert _rel(feature_distance=2.0).to_dict()["far"] is True
    # a dev set too small to choose checkpoints on: its words and the WER's chance spread (40% on 160 words: 3.9)
    small = warnings_for(_rel(dev_words=160))
    assert len(small) == 1 and small[0].startswith("small target dev set: 160 words") and "about 3.9 points" in small[0]
    assert warnings_for(_rel(dev_words=500)) == [] and warnings_for(_rel(dev_words=0)) == []  # 0: not counted
