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
