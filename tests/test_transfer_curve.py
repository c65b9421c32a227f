"""bench/transfer_curve.py without training anything: options, nested train subsets, budgets, FSDD splits and
the verdict on the targets."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "transfer_curve.py"


@pytest.fixture(scope="module")
def tc():
    spec = importlib.util.spec_from_file_location("transfer_curve", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_curve"] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_and_quick(tc):
    a = tc.parse_args([])
    assert a.sizes == [1.0, 2.0, 5.0, 10.0] and a.strategies == ["head", "finetune", "adapters"]
    assert a.minutes_per_run == 3.0 and a.target_accent == "en-gb-scotland"
    assert a.out.endswith("bench/results/transfer_curve.json")
    q = tc.parse_args(["--quick"])
    assert q.sizes == [1.0] and q.strategies == ["head"] and q.minutes_per_run == 0.5
    assert q.out.endswith("transfer_curve.quick.json")
    o = tc.parse_args(["--quick", "--sizes", "5,1", "--strategies", "adapters,head", "--minutes-per-run", "2"])
    assert o.sizes == [1.0, 5.0] and o.strategies == ["adapters", "head"] and o.minutes_per_run == 2.0


@pytest.mark.parametrize("argv", [["--sizes", "0"], ["--sizes", "a"], ["--strategies", "lora"],
                                  ["--minutes-per-run", "0"], ["--source-replay", "1"], ["--time-cap", "0.5"]])
def test_bad_options_are_refused(tc, argv):
    with pytest.raises(SystemExit):
        tc.parse_args(argv)


def test_subsets_are_nested_prefixes_within_their_size(tc):
    durations = [2.0 + (i % 7) * 0.3 for i in range(400)]
    sizes = [1.0, 2.0, 5.0, 10.0]
    counts = tc.nested_subsets(durations, sizes)
    ns = [counts[s] for s in sizes]
    assert ns == sorted(ns) and len(set(ns)) == 4  # prefixes of one pool: 1 min c 2 min c 5 min c 10 min
    for s in sizes:
        n = counts[s]
        assert sum(durations[:n]) <= s * 60 < sum(durations[: n + 1])
    with pytest.raises(ValueError):
        tc.nested_subsets(durations[:100], [20.0])


def test_step_budget_matches_the_job_schedule(tc):
    # adapt.TrainJob.schedule: steps_per_epoch = ceil(utts / (batch - replay share)); total = epochs x that
    for strategy in tc.STRATEGIES:
        for utts in (24, 48, 120, 240):
            epochs = tc.epochs_for(strategy, 3.0, utts, 0.2)
            per_epoch = math.ceil(utts / (16 - round(16 * 0.2)))
            assert abs(epochs * per_epoch - tc.steps_for(strategy, 3.0)) <= per_epoch / 2 + 1 or epochs == 1
    assert tc.steps_for("head", 3.0) > tc.steps_for("adapters", 3.0) > tc.steps_for("finetune", 3.0)
    assert abs(tc.steps_for("scratch", 3.0, 4000) - 2 * tc.steps_for("scratch", 3.0, 8000)) <= 1  # half the frames


def test_fsdd_split_by_take(tc):
    rows = [{"audio": f"recordings/{d}_{spk}_{t}.wav", "text": "x"} for spk in ("nicolas", "theo")
            for d in range(10) for t in range(50)]
    split = tc.fsdd_split(rows, "nicolas")
    assert {k: len(v) for k, v in split.items()} == {"test": 50, "dev": 50, "train": 400}
    assert all("_nicolas_" in r["audio"] for v in split.values() for r in v)
    kept, dropped = tc.trainable([{"text": "seven", "duration": 0.18}, {"text": "seven", "duration": 0.4}], 0.04)
    assert len(kept) == 1 and dropped == 1


def test_assess_targets(tc):
    base = {"target_wer": 0.5, "source_wer": 0.2}
    runs = [
        {"minutes": 5.0, "model": "finetune", "target_wer": 0.15, "source_wer": 0.25},  # best, but forgets 5 points
        {"minutes": 5.0, "model": "adapters", "target_wer": 0.19, "source_wer": 0.205},  # 62% cut, +0.5 point
        {"minutes": 5.0, "model": "scratch", "target_wer": 1.0, "source_wer": 1.0},
        {"minutes": 1.0, "model": "adapters", "target_wer": 0.45, "source_wer": 0.2},
        {"minutes": 1.0, "model": "scratch", "target_wer": 1.0, "source_wer": 1.0},
    ]
    t = tc.assess(runs, base, [1.0, 5.0], ["finetune", "adapters"])
    cut = t["cut_at_5_minutes"]
    assert cut["best_strategy"] == "adapters" and cut["met"] and cut["relative_cut"] == pytest.approx(0.62)
    assert cut["best_strategy_ignoring_source"] == "finetune"
    assert t["beats_scratch"]["met"] is True
    runs[1]["target_wer"] = 0.25  # 50% cut: not enough
    assert tc.assess(runs, base, [1.0, 5.0], ["finetune", "adapters"])["cut_at_5_minutes"]["met"] is False
    runs[3]["target_wer"] = 1.0  # no better than scratch at 1 min
    assert tc.assess(runs, base, [1.0, 5.0], ["finetune", "adapters"])["beats_scratch"]["met"] is False
    assert tc.assess(runs[:3], base, [1.0, 5.0], ["finetune", "adapters"])["beats_scratch"]["met"] is None


def test_whisper_defaults_and_outputs(tc):
    w = tc.parse_args(["--model", "whisper-tiny-en"])
    assert w.family == tc.WHISPER and w.sizes == [1.0, 5.0, 10.0] and w.strategies == ["head", "adapters"]
    assert w.minutes_per_run == 2.0 and w.source_replay == 0.25 and w.target_accent == tc.WHISPER_TARGET
    assert w.test_utterances == w.source_test_utterances == 60 and not w.no_default
    assert w.out.endswith("bench/results/transfer_curve.whisper-tiny-en.json")
    q = tc.parse_args(["--model", "whisper-tiny-en@1", "--quick"])
    assert q.sizes == [0.5] and q.strategies == ["head"] and q.out.endswith("transfer_curve.whisper-tiny-en.quick.json")
    # base-en keeps its options and result file; explicit options win over either family's defaults
    c = tc.parse_args(["--model", "base-en"])
    assert c.family == "ctc" and c.source_replay == 0.5 and c.target_accent == "en-gb-scotland"
    assert c.out.endswith("bench/results/transfer_curve.json")
    o = tc.parse_args(["--model", "whisper-tiny-en", "--strategies", "finetune", "--source-replay", "0", "--no-default"])
    assert o.strategies == ["finetune"] and o.source_replay == 0 and o.no_default
    assert tc.family_of("/store/my-whisper-adapted/3") == tc.WHISPER and tc.family_of("base-en@1") == "ctc"
    assert tc.default_out("models/accent-x@2", False).endswith("transfer_curve.accent-x.json")


def test_whisper_budgets_use_their_own_step_times(tc):
    ws = tc.step_seconds(tc.WHISPER)
    for strategy in tc.STRATEGIES:
        assert tc.steps_for(strategy, 2.0, seconds=ws) < tc.steps_for(strategy, 2.0)  # slower steps, fewer of them
        assert tc.steps_for(strategy, 2.0, seconds=ws) == max(1, int(tc.TRAIN_SHARE * 120 / ws[strategy]))
    assert tc.steps_for("head", 2.0, seconds=ws) > tc.steps_for("adapters", 2.0, seconds=ws) > \
        tc.steps_for("finetune", 2.0, seconds=ws)
    # 60 target utterances, replay 0.25 of 16: 12 a batch, 5 steps an epoch
    assert tc.epochs_for("head", 2.0, 60, 0.25, seconds=ws) == round(tc.steps_for("head", 2.0, seconds=ws) / 5)
    assert tc.step_seconds("ctc") is tc.STEP_SECONDS


def test_default_job_and_columns(tc):
    spec = tc.default_spec("tc-1m-default", "/d/train.jsonl", "/d/dev.jsonl")
    assert sorted(spec) == ["base_model", "dev_manifest", "name", "train_manifest"]
    from speechadapt.jobspec import JobSpec

    job = JobSpec(**spec)  # valid as it stands: everything else is the job's default
    assert job.strategy == "auto" and job.source_replay is None
    assert tc.models_of(["head", "adapters"], True, False) == ["head", "adapters", "default"]
    assert tc.models_of(["head"], True, True) == ["head", "default", "scratch"]
    assert tc.models_of(["finetune"], False, True) == ["finetune", "scratch"]
    assert tc.chosen_strategy({"choices": ["source_replay auto -> 0.25 of each batch",
                                           "strategy auto -> head (a Whisper base with 1.0 min ...)"]}) == "head"
    assert tc.chosen_strategy({}) is None


def test_whisper_text_splits(tc):
    a, b, c = tc.split_texts([f"s{i}" for i in range(10)], [5, 3, 2])
    assert a == [f"s{i}" for i in range(5)] and b == ["s5", "s6", "s7"] and c == ["s8", "s9"]
    with pytest.raises(ValueError):
        tc.split_texts(["a", "b"], [2, 1])


def test_a_base_trained_on_data_text_gets_ordinary_english_sets(tc):
    # the shipped base-en's card names its sentences file: its curve uses `data text` sentences as Whisper's does,
    # the "ordinary English sentences"; a closed-vocabulary base keeps the generator in its vocabulary
    from speechadapt.asr.package import read_card
    from speechadapt.asr.store import BUILTIN_DIR

    bm = tc.bm
    shipped = BUILTIN_DIR / "base-en"
    info = bm.training_info(read_card(shipped), shipped, None)
    assert info.sentences_file and tc.natural_text(info, whisper=False)
    assert not tc.natural_text(bm.TrainingInfo(vocab_size=1000), whisper=False)
    assert tc.natural_text(bm.TrainingInfo(vocab_size=1000), whisper=True)


def test_assess_without_scratch_says_why(tc):
    base = {"target_wer": 0.5, "source_wer": 0.2}
    runs = [{"minutes": 5.0, "model": "head", "target_wer": 0.1, "source_wer": 0.2},
            {"minutes": 5.0, "model": "default", "target_wer": 0.05, "source_wer": 0.2}]
    t = tc.assess(runs, base, [5.0], ["head"], scratch_note="skipped for Whisper")
    assert t["cut_at_5_minutes"]["best_strategy"] == "head" and t["cut_at_5_minutes"]["met"]  # default not a strategy
    assert t["beats_scratch"]["met"] is None and t["beats_scratch"]["note"] == "skipped for Whisper"
    assert "not measured (skipped for Whisper)" in tc.targets_text(t)


def test_tables_show_default_and_old_results_still_render(tc):
    import json

    latest = json.loads((BENCH.parent / "results" / "transfer_curve.json").read_text())
    assert tc.tables(latest) + "\n\n" + tc.targets_text(latest["targets"]) == latest["markdown"]  # the same text
    assert "| default |" in tc.tables(latest)
    old = json.loads(json.dumps(latest))  # as results written before the default row were: no such runs or settings
    old["runs"] = [r for r in old["runs"] if r["model"] != "default"]
    for key in ("default_job", "default_job_spec"):
        old["settings"].pop(key, None)
    assert "default" not in tc.tables(old)  # unchanged columns
    new = json.loads(json.dumps(old))
    new["settings"].update(default_job=True, default_job_spec="four keys", no_scratch=True, scratch_note="why not")
    size = new["settings"]["sizes"][0]
    new["runs"].append({"minutes": size, "model": "default", "target_wer": 0.2, "source_wer": 0.1, "promoted": True,
                        "choices": ["strategy auto -> adapters (...)"], "steps": 40})
    text = tc.tables(new)
    assert "| default |" in text.splitlines()[2] + " |" or " default " in text.splitlines()[2]
    assert f"| {size:g} min | default (adapters) | 20.0%" in text and "scratch: why not." in text
