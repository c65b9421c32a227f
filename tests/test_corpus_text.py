"""speechadapt.training.corpus_text: natural training text from the installed fortunes and wordnet-base packages
(real package files, a few seconds)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from speechadapt.client.cli import main as cli
from speechadapt.training import corpus_text as ct
from speechadapt.training.corpus_text import TextConfig, build, clean, sentences_of, split_of

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = re.compile(r"^[a-z']+( [a-z']+)*$")
MISSING = [s.package for s in ct.SOURCES.values() if not (Path("/usr/share") / s.paths[0]).is_file()]


@pytest.fixture(autouse=True)
def _packages_installed():
    if MISSING:
        pytest.fail(f"the text sources need their Debian packages: apt-get install {' '.join(MISSING)} "
                    "(`make install` does it)")


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_sentences_are_normalised_distinct_and_sources_json_lists_licences(tmp_path):
    r = build(TextConfig(out=tmp_path / "train.txt", sentences=600, seed=1))
    got = lines(tmp_path / "train.txt")
    assert got == r.sentences and len(got) == 600 == len(set(got))
    for s in got:
        assert SENTENCE.match(s), s
        assert 3 <= len(s.split()) <= 20, s
    meta = json.loads((tmp_path / "train.sources.json").read_text())
    assert r.sources_json == tmp_path / "train.sources.json"
    assert meta["sentences"] == 600 and meta["split"] == "train" and meta["seed"] == 1
    rows = {row["source"]: row for row in meta["sources"]}
    assert set(rows) == {"fortunes", "wordnet", "templates"}
    assert sum(row["sentences_used"] for row in rows.values()) == 600
    assert rows["templates"]["sentences_used"] == 120  # template_share 0.2
    assert "BSD" in rows["fortunes"]["licence"] and "WordNet" in rows["wordnet"]["licence"]
    for name in ("fortunes", "wordnet"):
        assert rows[name]["sentences_used"] > 50
        assert rows[name]["version"] not in ("", "unknown")  # dpkg's version of the package
        assert rows[name]["sentences_in_package"] > 10000
    # the text is mostly real sentences, not the templates
    assert sum("dollars" in s or "o'clock" in s for s in got) < 120


def test_same_seed_same_file_other_seed_other_order(tmp_path):
    a, b, c = (tmp_path / f"{n}.txt" for n in "abc")
    build(TextConfig(out=a, sentences=300, seed=4))
    build(TextConfig(out=b, sentences=300, seed=4))
    build(TextConfig(out=c, sentences=300, seed=5))
    assert a.read_bytes() == b.read_bytes()
    assert lines(a) != lines(c)
    meta_a, meta_b = (json.loads((tmp_path / f"{n}.sources.json").read_text()) for n in "ab")
    assert meta_a.pop("file") == "a.txt" and meta_b.pop("file") == "b.txt" and meta_a == meta_b


def test_held_out_split_never_leaks(tmp_path):
    test = build(TextConfig(out=tmp_path / "test.txt", split="test", sentences=400, seed=0)).sentences
    dev = build(TextConfig(out=tmp_path / "dev.txt", split="dev", sentences=300, seed=0)).sentences
    assert all(split_of(s) == "test" for s in test) and all(split_of(s) == "dev" for s in dev)
    held_out = set(test) | set(dev)
    for seed, sources in ((0, ("fortunes", "wordnet", "templates")), (9, ("templates",)), (3, ("wordnet",))):
        train = build(TextConfig(out=tmp_path / "train.txt", sentences=3000, seed=seed, sources=sources)).sentences
        assert all(split_of(s) == "train" for s in train)
        assert not held_out & set(train)
    # the split is a property of the sentence: the natural test split holds ~5% of every source
    pool = ct._pool("wordnet", "/usr/share", (3, 20))
    share = sum(split_of(s) == "test" for s in pool) / len(pool)
    assert 0.04 < share < 0.06


def test_exclude_file_keeps_benchmark_sentences_out(tmp_path):
    first = build(TextConfig(out=tmp_path / "a.txt", sentences=200, seed=2)).sentences
    banned = tmp_path / "bench.txt"
    banned.write_text("# a comment line\n" + "\n".join(s.upper() + "." for s in first[:50]) + "\n")
    again = build(TextConfig(out=tmp_path / "b.txt", sentences=200, seed=2, exclude=(banned,))).sentences
    assert not set(first[:50]) & set(again)
    assert json.loads((tmp_path / "b.sources.json").read_text())["excluded_sentences"] == 50


def test_cleaning_spells_out_and_rejects_what_espeak_would_not_say_as_written():
    assert clean("Dr. Smith paid $20 at 3:30 yesterday.", (3, 20)) == \
        "doctor smith paid twenty dollars at three thirty yesterday"
    assert clean("Meet me on the 3rd floor, 50% off!", (3, 20)) == "meet me on the third floor fifty percent off"
    assert clean("The IBM PC is old.", (3, 20)) is None  # an acronym is spelled out letter by letter
    assert clean("x = y[0] is code", (3, 20)) is None
    assert clean("Go now.", (3, 20)) is None  # too short
    assert clean(" ".join(["word"] * 21), (3, 20)) is None
    assert sentences_of('He said "I\'ll be back." Then he left.  St. Louis is far. Mr. Brown came.') == \
        ['He said "I\'ll be back."', "Then he left.", "St. Louis is far.", "Mr. Brown came."]
    assert clean("Mr. Brown came home at last.", (3, 20)) == "mister brown came home at last"
    assert clean("St. Louis is far away.", (3, 20)) is None  # St. is saint or street
    assert sentences_of("No. Nobody is as tired as I. Then we left.") == \
        ["No.", "Nobody is as tired as I.", "Then we left."]
    assert clean("Nobody is as tired as I.", (3, 20)) == "nobody is as tired as i"


def test_bad_input_and_a_missing_source_package_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"apt-get install fortunes"):
        build(TextConfig(out=tmp_path / "t.txt", share_dir=tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"apt-get install wordnet-base"):
        build(TextConfig(out=tmp_path / "t.txt", sources=("wordnet",), share_dir=tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"unknown text source 'gutenberg'; valid: fortunes, wordnet, templates"):
        build(TextConfig(out=tmp_path / "t.txt", sources=("gutenberg",)))
    with pytest.raises(ValueError, match=r"has \d+ .*ask for fewer --sentences"):
        build(TextConfig(out=tmp_path / "t.txt", split="dev", sentences=100000))
    with pytest.raises(ValueError, match=r"is a folder"):
        build(TextConfig(out=tmp_path))
    assert not (tmp_path / "t.txt").exists()


def test_cli_writes_text_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "t" / "train.txt"
    assert cli(["data", "text", "--out", str(out), "--sentences", "50", "--seed", "3", "--sources", "wordnet,templates",
                "--template-share", "0.5"]) == 0
    assert "wrote 50 sentences" in capsys.readouterr().out
    meta = json.loads((tmp_path / "t" / "train.sources.json").read_text())
    assert [r["source"] for r in meta["sources"]] == ["wordnet", "templates"]
    assert [r["sentences_used"] for r in meta["sources"]] == [25, 25]
    assert cli(["data", "text", "--out", str(out), "--sources", "books"]) == 2
    assert "unknown text source 'books'" in capsys.readouterr().err
    assert cli(["data", "text", "--list-sources"]) == 0
    assert "wordnet-base" in capsys.readouterr().out


def test_model_card_lists_text_sources_and_licences(tmp_path):
    from speechadapt.training import model_card

    package = tmp_path / "pkg"
    shutil.copytree(ROOT / "asr" / "models" / "base-en", package)
    text = tmp_path / "text" / "train.txt"
    build(TextConfig(out=text, sentences=100, seed=1))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    summary = json.loads((package / "model.json").read_text())["lineage"]["corpus"]
    summary["config"] = {**summary.get("config", {}), "sentences_file": str(text), "vocab_size": None}
    (corpus / "summary.json").write_text(json.dumps(summary))
    card = model_card.finish(package, corpus, None, None, "make base-en")
    assert [r["source"] for r in card["lineage"]["text_sources"]["sources"]] == ["fortunes", "wordnet", "templates"]
    md = (package / "MODEL_CARD.md").read_text()
    assert "fortunes: " in md and "BSD-3-Clause" in md and "WordNet 3.0 licence" in md
    assert f"{text}, 100 sentences of 3-20 words" in md
    assert f"the {summary['utterances']} utterances speak" in md


def test_base_model_bench_reads_held_out_test_text(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_base_model", ROOT / "bench" / "base_model.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    test = build(TextConfig(out=tmp_path / "test.txt", split="test", sentences=40, seed=3)).sentences
    info = bench.TrainingInfo(seed=1, texts={test[0]})  # a training transcript is never a test sentence
    args = argparse.Namespace(seed=123, words=None, test_text=str(tmp_path / "test.txt"), sentence_words=None,
                              vocab_size=None)
    text = bench.make_text(args, info, 30)
    assert text.sentences == test[1:31] and text.skipped_training == 1 and not text.notes
    with pytest.raises(ValueError, match="fewer than the 40 asked for"):
        bench.make_text(args, info, 40)
