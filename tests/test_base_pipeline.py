"""The new pieces of `make base-en`: engine-weighted corpora (engine_plan + data synth --engine-weights, --plan)
and a model card that lists the voices with their licences, the text sources and the attached LM."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from speechadapt.asr.store import BUILTIN_DIR
from speechadapt.training import engine_plan as E
from speechadapt.training import synth

SPEAKERS = ([("espeak", v, w) for v in ("en-us", "en-gb") for w in ("none", *"abcdefghi")]
            + [("flite", v, "none") for v in ("kal16", "awb", "rms", "slt")]
            + [("festival", v, "none") for v in ("kal", "ked", "slt")] + [("piper", "joe", "none")])
BASE_WEIGHTS = E.parse_weights("espeak=0.5,flite=0.2,festival=0.2,piper=0.1")  # the Makefile's BASE_WEIGHTS


def test_unweighted_schedule_is_every_speaker_once():
    """No weights: the block is each speaker once, as synth always balanced (old corpora stay byte-identical)."""
    assert E.schedule(SPEAKERS, None) == list(range(len(SPEAKERS)))
    rows = {r.engine: r for r in E.plan(SPEAKERS, None, 4.0)}
    assert rows["piper"].share == pytest.approx(1 / 28) and rows["espeak"].share == pytest.approx(20 / 28)


def test_engine_weights_give_each_engine_its_share_split_over_its_speakers():
    slots = E.schedule(SPEAKERS, BASE_WEIGHTS)
    assert len(slots) == 120  # the shortest block that holds 2.5% / 5% / 6.67% / 10% per speaker exactly
    per_speaker = Counter(slots)
    assert {per_speaker[k] for k in range(20)} == {3}  # espeak: 50% over 20 speakers
    assert {per_speaker[k] for k in range(20, 24)} == {6} and {per_speaker[k] for k in range(24, 27)} == {8}
    assert per_speaker[27] == 12  # piper: one voice, 10%
    rows = {r.engine: r for r in E.plan(SPEAKERS, BASE_WEIGHTS, 4.0)}
    assert {e: round(r.hours, 6) for e, r in rows.items()} == {"espeak": 2.0, "flite": 0.8, "festival": 0.8, "piper": 0.4}
    assert rows["piper"].synth_minutes > rows["espeak"].synth_minutes  # Piper costs most per second of audio
    # shares that no short block holds exactly: largest remainders over 200 slots, every speaker at least once
    odd = E.schedule(SPEAKERS, {"espeak": 0.97, "flite": 0.01, "festival": 0.01, "piper": 0.01 * 2 ** 0.5})
    assert len(odd) == 200 and set(odd) == set(range(len(SPEAKERS)))


@pytest.mark.parametrize("text, match", [
    ("espeak=0.5,flite", "ENGINE=WEIGHT"),
    ("espeak=half", "not a number"),
    ("espeak=1,espeak=2", "twice"),
    ("", "empty"),
])
def test_bad_weight_text_says_what_to_fix(text, match):
    with pytest.raises(ValueError, match=match):
        E.parse_weights(text)


@pytest.mark.parametrize("weights, match", [
    ({"espeak": 1, "flite": 1}, "no weight for engine.*festival, piper"),
    ({**BASE_WEIGHTS, "mbrola": 1}, "mbrola, not among the engines"),
    ({**BASE_WEIGHTS, "piper": 0}, "positive.*piper=0.*leave an engine out"),
])
def test_weights_must_match_the_engines(weights, match):
    with pytest.raises(ValueError, match=match):
        E.schedule(SPEAKERS, weights)


def test_weighted_corpus_plan_and_manifest(tmp_path, capsys):
    """A real weighted corpus (espeak-ng and flite, the fast engines): two blocks of 8 utterances give the shares
    exactly; --plan prints the hours per engine and writes nothing."""
    out = tmp_path / "c"
    args = ["--out", str(out), "--engines", "espeak,flite", "--voices", "en-us,flite:slt,flite:rms", "--variants",
            "2", "--engine-weights", "espeak=1,flite=3", "--seed", "5", "--jobs", "2", "--quiet"]
    assert synth.main([*args, "--hours", "2", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "2 h asked, 4 speakers" in printed
    lines = {ln.split()[0]: ln.split() for ln in printed.splitlines() if ln.split() and ln.split()[0] in ("espeak", "flite")}
    assert lines["espeak"][1:4] == ["2", "25.0%", "0.50"] and lines["flite"][1:4] == ["2", "75.0%", "1.50"]
    assert not out.exists()
    assert synth.main([*args, "--count", "16"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert Counter(r["engine"] for r in rows) == {"espeak": 4, "flite": 12}
    assert Counter(r["speaker"] for r in rows) == {"en-us": 2, "en-us+m1": 2, "flite-slt": 6, "flite-rms": 6}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["engine_weights"] == {"espeak": 1.0, "flite": 3.0}
    assert set(summary["per_engine_hours"]) == {"espeak", "flite"}
    assert synth.main([*args, "--engine-weights", "espeak=1", "--count", "4"]) == 2
    assert "no weight for engine(s) flite" in capsys.readouterr().err


def test_model_card_lists_voices_text_sources_and_the_lm(tmp_path):
    """model_card.finish on a copy of base-en with a weighted two-engine corpus of `data text` sentences and an
    attached LM: the card names every engine with its version, voices and licence, the text sources with their
    licences, and the LM (order, counts, size)."""
    from speechadapt.lm import LmBuildConfig, attach, build
    from speechadapt.training import corpus_text, model_card

    package = tmp_path / "base-en"
    shutil.copytree(BUILTIN_DIR / "base-en", package)  # its own LM: attach below replaces it
    text = tmp_path / "text" / "train.txt"
    assert corpus_text.main(["--out", str(text), "--split", "train", "--sentences", "60", "--seed", "1"]) == 0
    corpus = tmp_path / "corpus"
    assert synth.main(["--out", str(corpus), "--engines", "espeak,flite", "--voices", "en-us,flite:slt",
                       "--variants", "1", "--engine-weights", "espeak=1,flite=1", "--sentences", str(text),
                       "--count", "6", "--jobs", "2", "--quiet"]) == 0
    build(LmBuildConfig(texts=(str(text),), out=str(tmp_path / "lm"), order=3, broad_words=None, prune=(0, 1)))
    attach(package, tmp_path / "lm")

    card = model_card.finish(package, corpus, None, None, "make base-en")
    engines = {e["engine"]: e for e in card["lineage"]["engines"]}
    assert set(engines) == {"espeak", "flite"}
    assert engines["flite"]["voices"] == ["flite:slt"] and engines["flite"]["speakers"] == 1
    assert "GPL" in engines["espeak"]["licence"] and "CMU" in engines["flite"]["licence"]
    assert card["lineage"]["lm"]["order"] == 3 and card["lineage"]["lm"]["prune"] == [0, 1]
    md = (package / "MODEL_CARD.md").read_text()
    assert "## Data (synthetic: espeak, flite, nothing downloaded)" in md
    lin = card["lineage"]  # the shipped base-en was trained in resumed runs: the card counts all their time
    assert lin["resumed_from_steps"] and (f"{lin['train_seconds'] / 60:.0f} min of training over "
                                          f"{len(lin['resumed_from_steps']) + 1} runs (resumed at steps ") in md
    versions = json.loads((corpus / "summary.json").read_text())["engines"]
    assert f"- flite {versions['flite']}: flite:slt (1 speaker, " in md and "licence: CMU flite licence" in md
    assert f"- espeak {versions['espeak']}: en-us (1 speaker, " in md and "licence: GPL-3.0" in md
    sources = json.loads(corpus_text.sources_json_for(text).read_text())["sources"]
    for s in sources:  # every text source with its licence
        if s.get("sentences_used"):
            assert f"- {s['source']}: {s['sentences_used']} sentences" in md and s["licence"] in md
    assert "## Language model (lm/)" in md and "3-gram word LM" in md and "finals are a beam search over the LM" in md
