"""bench/streaming.py's arithmetic on synthetic numbers: percentiles, the real-time capacity search, the final
latency definition, joining sentences, and the report tables (no server, no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "streaming.py"


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location("bench_streaming", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _level(n, p95, errors=0, ok=10):
    return {"streams": n, "ok": ok, "errors": errors, "final_ms": {"p50": p95 / 2, "p95": p95, "p99": p95, "n": ok}}


def test_percentiles(sb):
    assert sb.percentiles([]) is None
    assert sb.percentiles([None, None]) is None
    p = sb.percentiles(range(1, 101))
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert sb.percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "n": 1}


def test_capacity_is_the_highest_level_of_an_unbroken_passing_run(sb):
    levels = [_level(1, 100), _level(10, 200), _level(20, 450), _level(40, 900), _level(60, 300)]
    assert sb.realtime_capacity(levels, 500) == 20  # 60 passing after 40 failed does not count
    assert sb.first_failing_above(levels, 20, 500) == 40
    assert sb.realtime_capacity([_level(1, 600)], 500) is None
    # errors fail a level whatever its latency; so does a level with no successful stream
    assert sb.realtime_capacity([_level(1, 100), _level(10, 100, errors=1)], 500) == 1
    assert not sb.level_passes({"streams": 5, "ok": 0, "errors": 0, "final_ms": None}, 500)


def test_bisection_probes_between_pass_and_fail(sb):
    assert sb.bisect_probe(20, 40, {1, 10, 20, 40}) == 30
    assert sb.bisect_probe(30, 40, {30, 40}) == 35
    assert sb.bisect_probe(36, 40, set()) is None  # within ~10%
    assert sb.bisect_probe(20, None, set()) is None  # nothing failed: nothing to search
    assert sb.bisect_probe(None, 10, {10}) == 5  # even the lowest failed
    assert sb.bisect_probe(1, 2, set()) is None


def test_final_latency_counts_an_early_final_as_zero(sb):
    assert sb.final_latency(10.0, 10.25) == (pytest.approx(0.25), False)
    assert sb.final_latency(10.0, 9.5) == (0.0, True)


def test_joined_sentences_reach_the_length_with_pauses(sb):
    rate = 16000
    utts = [sb.Utt(f"u{i}", f"word{i}", np.ones(rate + rate // 2, np.int16), rate, rate) for i in range(3)]
    u, count = sb.joined(utts, 5.0, 0.25, 1.0, "j")
    # 1 s of speech per sentence (the padding is dropped), 0.25 s between, until >= 5 s: 5 sentences
    assert count == 5 and u.speech_frames == 5 * rate + 4 * rate // 4
    assert u.seconds == pytest.approx(5 + 1.0 + 1.0)
    assert u.text == "word0 word1 word2 word0 word1"
    assert not u.samples[u.speech_frames:].any()


def test_report_tables_and_targets(sb):
    lv = {**_level(20, 240), "measured": 10, "error_codes": {}, "first_partial_ms": {"p50": 400, "p95": 650, "p99": 690},
          "finals_before_eos": 3, "server_cpu_pct": 120.0, "server_rss_mb_peak": 300.0, "client_cpu_pct": 20.0, "wer": 0.1}
    lv40 = {**lv, **_level(40, 800, errors=2), "error_codes": {"RESOURCE_EXHAUSTED": 2}}
    result = {
        "realtime": {"threshold_ms": 500, "levels": [lv, lv40], "bisect_probes": [30], "capacity": 20,
                     "passing_levels": [20]},
        "length": [{"target_s": 5, "reps": 6, "audio_s": 6.1, "wer": 0.1, "fast": {"wall_ms_per_audio_s": 30.0,
                    "server_cpu_ms_per_audio_s": 40.0}, "paced": {"final_ms": 120, "server_cpu_ms_per_audio_s": 41.0}},
                   {"target_s": 60, "reps": 2, "audio_s": 61.0, "wer": 0.1, "fast": {"wall_ms_per_audio_s": 31.0,
                    "server_cpu_ms_per_audio_s": 90.0}}],
        "wer": {"rows": [{"set": "target domain (synthetic)", "ours": {"utterances": 4, "audio_s": 30, "wer": 0.2,
                                                                     "cpu_s_per_audio_s": 0.05},
                          "pocketsphinx": {"utterances": 4, "audio_s": 30, "wer": 0.6, "cpu_s_per_audio_s": 0.4}},
                         {"set": "fsdd", "note": "skipped: absent"}]},
    }
    got = {t["target"].split(",")[0]: t["met"] for t in sb.targets(result)}
    assert got["concurrent real-time streams (p95 final <= 500 ms"] is False  # 20 < 40
    assert got["final after end of audio"] is True and got["first partial"] is True
    assert got["WER on target-domain audio"] is True
    assert got["cost per audio second"] is False  # 90 vs 40 ms per audio second grows
    result["targets"] = sb.targets(result)
    text = sb.report(result)
    assert "| 20 | 10 / 10 | 0 | 400 / 650 / 690 | 120 / 240 / 240 | 3 | - | 120 | 300 | 20 | 10.0% |" in text
    assert "2 (RESOURCE_EXHAUSTED 2)" in text and "**20** streams" in text
    assert "| target domain (synthetic) | 4 | 0.50 | 20.0% | 60.0% | 0.050 | 0.400 |" in text
    assert "- fsdd: skipped: absent" in text
