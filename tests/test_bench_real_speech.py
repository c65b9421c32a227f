"""bench/real_speech.py's pure helpers on made-up transcripts: scoring of digits and sentences, pooling, the
speech-onset run search, the report tables, the targets and the results document's shape (no server, no
models, no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "real_speech.py"


@pytest.fixture(scope="module")
def rs():
    spec = importlib.util.spec_from_file_location("bench_real_speech", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _recs(pairs, audio=1.0):
    return [{"utt": f"u{i}", "ref": r, "hyp": h, "error": None, "audio_s": audio} for i, (r, h) in enumerate(pairs)]


def _cell(rs, pairs, busy=0.5, audio=1.0):
    recs = _recs(pairs, audio)
    c = rs.metrics(recs, audio * len(recs), busy * len(recs))
    c["records"] = recs
    return c


def test_fsdd_digits_as_whisper_writes_them_score_as_words(rs):
    refs = ["seven", "zero", "eight", "two", "nine"]
    hyps = ["7.", "Zero!", " Eight.", "2", "9?"]
    assert [rs.norm(h) for h in hyps] == refs
    assert rs.score(refs, hyps) == (0.0, 0.0)
    wer, _ = rs.score(["six"], ["Thank you."])  # a hallucination: one substitution and one insertion
    assert wer == pytest.approx(2.0)
    assert rs.score(["three"], [""])[0] == pytest.approx(1.0)  # nothing heard: one deletion
    assert rs.score([""], ["hello"]) == (None, None)  # no reference words: not scored


def test_sentences_are_normalised_before_scoring(rs):
    ref = "the girl at the booth sold fifty bonds"
    assert rs.score([ref], ["The girl at the booth sold 50 bonds."]) == (0.0, 0.0)
    wer, cer = rs.score([ref], ["The girl at the boot sold 50 bonds."])
    assert wer == pytest.approx(1 / 8) and 0 < cer < wer


def test_read_sentence_file_drops_comments_and_blank_lines(rs, tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("# a comment\n\nThe birch  canoe slid.\n   \n# another\nHelp the woman.\n")
    assert rs.read_sentence_file(f) == ["The birch canoe slid.", "Help the woman."]


def test_shipped_sentences_are_about_forty_distinct_and_not_the_speechbrain_ones(rs):
    sentences = rs.read_sentence_file(rs.SENTENCES)
    normed = [rs.norm(s) for s in sentences]
    assert 35 <= len(sentences) <= 45 and len(set(normed)) == len(normed) and all(normed)
    assert "mend the coat before you go out" not in normed and "what joy there is in living" not in normed


def test_metrics_and_pool_are_corpus_level(rs):
    a = _cell(rs, [("one two three four", "one two three four")], busy=0.2, audio=2.0)
    b = _cell(rs, [("five six", "five"), ("seven", "heaven")], busy=0.1, audio=1.0)
    assert a["wer"] == 0.0 and a["rtf"] == pytest.approx(0.1) and a["wrong"] == 0
    assert b["wer"] == pytest.approx(2 / 3) and b["wrong"] == 2 and b["utterances"] == 2
    p = rs.pool([a, b])
    assert p["wer"] == pytest.approx(2 / 7)  # words pooled, not the mean of the two WERs
    assert p["utterances"] == 3 and p["audio_s"] == pytest.approx(4.0)
    assert p["rtf"] == pytest.approx((0.2 + 0.2) / 4.0)
    assert len(p["records"]) == 3
    c = dict(b, busy_s=None)
    assert rs.pool([a, c])["rtf"] is None  # unknown time is not treated as zero
    assert rs.pool([]) is None and rs.pool([None]) is None


def test_first_run_and_subsample(rs):
    assert rs.first_run([False, True, False, True, True, True, True], 3) == 3
    assert rs.first_run([True, True], 3) is None and rs.first_run([], 1) is None
    assert rs.first_run([False, True], 1) == 1
    items = list(range(100))
    assert rs.subsample(items, None) == items and rs.subsample(items[:2], 3) == [0, 1]
    picked = rs.subsample(items, 4)
    assert picked == [0, 25, 50, 75]


def test_row_order_puts_each_pool_after_its_last_member(rs):
    S = rs.EvalSet
    sets = [S("fsdd A", "real", [], "", rs.FSDD), S("fsdd B", "real", [], "", rs.FSDD),
            S("speechbrain_asr_samples", "real", [], "", rs.READ), S("ljspeech_coqui_subset", "real", [], "", rs.READ),
            S("misc_single_utterances", "real", [], ""), S("ord us", "synthetic", [], "", rs.ORDINARY)]
    order = [(name, kind) for name, kind, _ in rs.row_order(sets)]
    assert order == [("fsdd A", "real"), ("fsdd B", "real"), (rs.FSDD, "pooled"),
                     ("speechbrain_asr_samples", "real"), ("ljspeech_coqui_subset", "real"), (rs.READ, "pooled"),
                     ("misc_single_utterances", "real"), ("ord us", "synthetic")]  # a pool of one is no extra row


class _Item:
    def __init__(self, name, seconds):
        self.name, self.seconds = name, seconds


def _doc(rs, whisper_read=("a b c d", "a b c d"), ordinary=("the cat sat", "the cat sat"), levels=None):
    S = rs.EvalSet
    sets = [S("fsdd X", "real", [_Item("d0", 0.5)], "digits", rs.FSDD),
            S("speechbrain_asr_samples", "real", [_Item("s0", 2.0)], "", rs.READ),
            S("ljspeech_coqui_subset", "real", [_Item("l0", 5.0)], "", rs.READ),
            S("ordinary English, espeak-ng en-us", "synthetic", [_Item("o0", 2.0)], "", rs.ORDINARY),
            S("ordinary English, espeak-ng en-gb", "synthetic", [_Item("o1", 2.0)], "", rs.ORDINARY)]
    pairs = {"fsdd X": ("six", "Thank you."), "speechbrain_asr_samples": whisper_read,
             "ljspeech_coqui_subset": whisper_read, "ordinary English, espeak-ng en-us": ordinary,
             "ordinary English, espeak-ng en-gb": ordinary}
    cells = {}
    for system in ("whisper streamed", "whisper in-process", "pocketsphinx"):
        cells[system] = {}
        for s in sets:
            c = _cell(rs, [pairs[s.name]])
            c["records"][0]["utt"] = s.items[0].name
            cells[system][s.name] = c
    rows = rs.accuracy_rows(sets, [{"set": "misc_single_utterances", "note": "skipped: absent"}], cells)
    result = {"accuracy": {"rows": rows}}
    if levels is not None:
        result["streaming"] = {"levels": levels}
    result["findings"] = rs.findings(rows)
    result["targets"] = rs.targets(result)
    doc = {"created": "x", "command": "python bench/real_speech.py", "settings": {}, "sets": [], **result,
           "markdown": rs.report(result), "machine": {}}
    return json.loads(json.dumps(doc))


def _level(model, n, first_p95, final_p95, errors=0):
    p = lambda v: {"p50": v / 2, "p95": v, "p99": v, "n": 5}  # noqa: E731
    return {"model": model, "streams": n, "ok": 5, "measured": 5 + errors, "errors": errors, "error_codes": {},
            "first_partial_ms": p(first_p95 + 50), "first_interim_after_speech_ms": p(first_p95),
            "final_ms": p(final_p95), "finals_before_eos": 0, "server_cpu_pct": 90.0, "wer": 0.05}


def test_result_document_shape_and_targets(rs):
    doc = _doc(rs, levels=[_level(rs.WHISPER, 4, 1200, 800), _level(rs.BASE, 4, 400, 100)])
    assert rs.result_shape_ok(doc) == []
    rows = {r["set"]: r for r in doc["accuracy"]["rows"]}
    assert rows[rs.READ]["kind"] == "pooled" and rows[rs.READ]["utterances"] == 2
    assert rows[rs.READ]["audio_s"] == pytest.approx(7.0)
    assert rows["misc_single_utterances"]["kind"] == "note"
    assert set(rows[rs.ORDINARY]["systems"]) == {"whisper streamed", "whisper in-process", "pocketsphinx"}
    met = [t["met"] for t in doc["targets"]]
    assert met == [True, True, True, True]
    assert doc["findings"]["whisper_streamed_hallucination_like"] == 1  # "Thank you." for "six"
    assert doc["findings"]["examples_hallucination"][0]["hyp"] == "Thank you."

    bad = _doc(rs, whisper_read=("a b c d e f g h i j", "a b c d e f g h i x"),  # 10% > 8%
               ordinary=("the cat sat on the mat", "the bat sat on the hat"),  # 33% > 20%
               levels=[_level(rs.WHISPER, 4, 1600, 900, errors=1)])
    assert [t["met"] for t in bad["targets"]] == [False, False, False, False]
    none = _doc(rs, levels=None)  # no streaming part: latency targets not measured
    assert [t["met"] for t in none["targets"]][2:] == [None, None]
    assert "not measured" in none["markdown"]
    broken = dict(doc)
    del broken["targets"]
    assert "missing targets" in rs.result_shape_ok(broken)


def test_tables(rs):
    doc = _doc(rs, levels=[_level(rs.WHISPER, 1, 1000, 500)])
    acc = rs.accuracy_table(doc["accuracy"]["rows"])
    lines = acc.splitlines()
    assert lines[0].startswith("| set | utts | audio min | whisper-tiny-en streamed (server) WER (CER)")
    assert len({line.count("|") for line in lines[:8]}) == 1  # every row has every column
    assert f"| **{rs.READ}** | 2 | 0.12 | 0.0% (0.0%) |" in acc
    assert "| fsdd X | 1 | 0.01 | 200.0% (" in acc
    assert "| misc_single_utterances | - | - |" in acc and "- misc_single_utterances: skipped: absent" in acc
    assert "base-en" in acc and acc.count(" - |") >= 4  # a system that did not run shows "-"
    rtf = rs.rtf_table(doc["accuracy"]["rows"])
    assert "| fsdd X | 0.500 | 0.500 | - | 0.500 |" in rtf
    lat = rs.latency_table(doc["streaming"]["levels"])
    assert "| whisper-tiny-en | 1 | 5 / 5 | 0 | 525 / 1050 | 500 / 1000 | 250 / 500 | 0 | - | 90 | 5.0% |" in lat
    rt = rs.runtime_table([{"runtime": "torch fp32", "decoding": "greedy", "threads": 2, "utterances": 3,
                            "audio_s": 60.0, "wer": 0.05, "cer": 0.01, "rtf": 0.2, "load_s": 2.5},
                           {"runtime": "torch int8", "decoding": "greedy", "threads": 2, "error": "boom"}])
    assert "| torch fp32 | greedy | 2 | 3 | 1.00 | 5.0% | 1.0% | 0.200 | 2.5 |" in rt
    assert "- torch int8 (greedy): boom" in rt
