"""speechadapt.training.synth: espeak-ng corpora (real espeak-ng, small corpora, a few seconds each)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechadapt.training import synth
from speechadapt.training.synth import SynthConfig, synthesize
from speechadapt.training.text import generate_sentence, load_vocabulary, normalize_text

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")

TRANSCRIPT = re.compile(r"^[a-z']+( [a-z']+)*$")
FIELDS = {"audio", "text", "speaker", "duration", "voice", "accent", "engine"}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def wav_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "audio").rglob("*.wav"))}


def small(out: Path, **kw) -> SynthConfig:
    kw = {"voices": ["en-us", "en-gb"], "variants": ["none", "f3", "m1"], "count": 6, "jobs": 1, "quiet": True, **kw}
    return SynthConfig(out_dir=out, **kw)


def test_same_seed_same_bytes_whatever_the_jobs(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    synthesize(small(a, seed=3, jobs=2))
    synthesize(small(b, seed=3))
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    assert wav_bytes(a) == wav_bytes(b) and len(wav_bytes(a)) == 6
    synthesize(small(c, seed=4))
    assert [u["text"] for u in manifest(c)] != [u["text"] for u in manifest(a)]
    assert wav_bytes(c) != wav_bytes(a)
    synthesize(small(d, seed=3, noise_snr=(15, 25), reverb=0.5, telephone=0.5))  # augmentation is seeded too
    synthesize(small(a, seed=3, noise_snr=(15, 25), reverb=0.5, telephone=0.5, jobs=2))  # rewrites the folder
    assert wav_bytes(a) == wav_bytes(d)
    assert (a / "manifest.jsonl").read_bytes() == (d / "manifest.jsonl").read_bytes()


def test_manifest_fields_audio_format_and_summary(tmp_path):
    s = synthesize(small(tmp_path, count=8, seed=1))
    rows = manifest(tmp_path)
    assert len(rows) == s.utterances == 8
    speakers = {f"{v}{'' if w == 'none' else '+' + w}" for v in ("en-us", "en-gb") for w in ("none", "f3", "m1")}
    for u in rows:
        assert set(u) == FIELDS
        assert TRANSCRIPT.match(u["text"]), u["text"]
        assert u["speaker"] in speakers and u["speaker"].split("+")[0] == u["voice"] == u["accent"]
        path = tmp_path / u["audio"]
        assert not Path(u["audio"]).is_absolute() and path.is_file()
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert u["duration"] == pytest.approx(info.frames / 16000, abs=1e-9)
        x, _ = sf.read(path, dtype="int16")
        loud = np.flatnonzero(np.abs(x.astype(np.int32)) > np.abs(x).max() * 10 ** (-45 / 20))
        assert 0.09 <= loud[0] / 16000 <= 0.21 and 0.09 <= (x.size - loud[-1]) / 16000 <= 0.21  # ~100-200 ms margins
        assert np.abs(x).max() > 3000  # speech, not silence
    assert sorted({u["speaker"] for u in rows}) == s.speakers
    assert all(n in (1, 2) for n in s.per_speaker.values())  # balanced over the 6 speakers
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["utterances"] == 8 and summary["seed"] == 1
    assert summary["per_voice"] == {"en-gb": 4, "en-us": 4}
    assert summary["hours"] == pytest.approx(sum(u["duration"] for u in rows) / 3600)
    assert summary["config"]["variants"] == ["none", "f3", "m1"]


def test_normalize_text_spells_numbers_and_drops_symbols():
    assert normalize_text("Call 555-0123 at 7:30, it's $12.50!") == \
        "call five five five zero one two three at seven thirty it's twelve dollars and fifty cents"
    assert normalize_text("The 3rd of May, 2024: 50% off & 1,200 items") == \
        "the third of may two thousand twenty four fifty percent off and one thousand two hundred items"
    assert normalize_text("Pi=3.14 \"quoted\" 'words' café 9:00") == \
        "pi equals three point one four quoted words cafe nine o'clock"
    assert normalize_text("  ...  ") == ""
    vocab, _ = load_vocabulary()
    for i in range(300):
        s = generate_sentence(np.random.default_rng([0, i]), vocab, (3, 10), 0.5)
        assert TRANSCRIPT.match(s) and not re.search(r"\d", s), s


def test_sentences_file_is_normalised_before_synthesis(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("Turn LEFT at 2 pm!\n\n   \nRoom 101, please.\n")
    synthesize(SynthConfig(out_dir=tmp_path / "c", sentences_file=lines, count=3, variants=1, jobs=1, quiet=True))
    assert [u["text"] for u in manifest(tmp_path / "c")] == \
        ["turn left at two pm", "room one hundred one please", "turn left at two pm"]


def test_augmentation_changes_audio_not_transcripts(tmp_path):
    clean, noisy, fast = tmp_path / "clean", tmp_path / "noisy", tmp_path / "fast"
    synthesize(small(clean, count=4, seed=5))
    synthesize(small(noisy, count=4, seed=5, noise_snr=(20, 20), reverb=1.0, telephone=1.0))
    synthesize(small(fast, count=4, seed=5, speed_perturb=[1.25]))
    a, b, f = manifest(clean), manifest(noisy), manifest(fast)
    assert [(u["text"], u["speaker"]) for u in a] == [(u["text"], u["speaker"]) for u in b] == \
        [(u["text"], u["speaker"]) for u in f]
    for ua, ub, uf in zip(a, b, f):
        xa, _ = sf.read(clean / ua["audio"], dtype="float32")
        xb, _ = sf.read(noisy / ub["audio"], dtype="float32")
        assert xa.shape == xb.shape and not np.allclose(xa, xb, atol=1e-3)
        spec = np.abs(np.fft.rfft(xb)) ** 2
        freqs = np.fft.rfftfreq(xb.size, 1 / 16000)
        assert spec[freqs > 4000].sum() < 1e-3 * spec.sum()  # telephone band
        assert uf["duration"] == pytest.approx(ua["duration"] / 1.25, rel=1e-3)


def test_closed_vocabulary(tmp_path):
    synthesize(small(tmp_path, vocab_size=30, count=8, words=(4, 8)))
    vocab, source = load_vocabulary(30)
    assert len(vocab) == 30 and ("the" in vocab or not source.startswith("wordfreq"))  # ranked by frequency
    words = [w for u in manifest(tmp_path) for w in u["text"].split()]
    assert len(words) >= 32 and set(words) <= set(vocab)


def test_hours_stops_at_the_target_and_leaves_no_stray_audio(tmp_path):
    synthesize(small(tmp_path, count=12))
    s = synthesize(small(tmp_path, count=None, hours=10 / 3600))  # ~4 utterances
    rows = manifest(tmp_path)
    total = sum(u["duration"] for u in rows)
    assert total >= 10 and total - rows[-1]["duration"] < 10 and s.utterances == len(rows) < 12
    assert sorted(wav_bytes(tmp_path)) == sorted(u["audio"] for u in rows)


def test_variants_by_number_and_voice_lists():
    voices, variants = synth.list_voices(), synth.list_variants()
    assert {"en-us", "en-gb"} <= set(voices) and all(v.startswith("en") for v in voices)
    assert {"f3", "m1"} <= set(variants)
    assert synth.resolve_variants(3, variants) == ["none", "m1", "f1"]


@pytest.mark.parametrize("kw, message", [
    ({"voices": ["en-xx"]}, "unknown English voice 'en-xx'; valid: .*en-gb.*en-us"),
    ({"variants": ["zz9"]}, "unknown espeak-ng variant 'zz9'"),
    ({"speed": (200, 100)}, "speed range"),
    ({"pitch": (0, 120)}, "pitch range"),
    ({"count": 5, "hours": 1.0}, "count or hours"),
    ({"espeak": "espeak-ng-absent"}, "apt-get install espeak-ng"),
    ({"noise_snr": (30, 10)}, "noise_snr range"),
])
def test_invalid_config_fails_before_writing(tmp_path, kw, message):
    out = tmp_path / "corpus"
    with pytest.raises(ValueError, match=message):
        synthesize(small(out, **kw))
    assert not out.exists()


def test_empty_text_and_unwritable_out_dir_fail_before_writing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n...!!\n")
    out = tmp_path / "corpus"
    with pytest.raises(ValueError, match="no text"):
        synthesize(small(out, sentences_file=empty))
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        synthesize(small(blocker / "corpus"))
    with pytest.raises(ValueError, match="not writable"):
        synthesize(small(Path("/proc/speechadapt-test/corpus")))  # even root cannot create folders in /proc
    if os.geteuid() != 0:  # root writes anywhere else
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ValueError, match="not writable"):
            synthesize(small(locked / "corpus"))
        assert not any(locked.iterdir())


def test_cli_errors_exit_2_and_module_runs(tmp_path, capsys):
    p = argparse.ArgumentParser()
    synth.add_arguments(p)
    assert synth.run(p.parse_args(["--out", str(tmp_path / "x"), "--voices", "en-us,klingon"])) == 2
    assert "error: unknown English voice 'klingon'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "speechadapt.training.synth", "--out", str(out), "--count", "2",
                        "--variants", "none,f3", "--vocab-size", "50", "--speed", "160:170", "--noise-snr", "20:30",
                        "--speed-perturb", "0.9,1.1", "--jobs", "1", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 utterances" in r.stdout and len(manifest(out)) == 2
    r = subprocess.run([sys.executable, "-c", "import sys, speechadapt.training.synth; print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False"
