"""bench/transfer_gap.py without training anything: options, the free run's spec, fresh sentences, the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gap():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("transfer_gap", BENCH / "transfer_gap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options(gap):
    a = gap.parse_args([])
    assert (a.minutes, a.free_minutes, a.free_lr, a.utterances) == (5.0, 12.0, 1e-3, 60)
    assert a.out.endswith("bench/results/transfer_gap.json")
    for bad in (["--free-minutes", "0"], ["--free-lr", "0"], ["--utterances", "2"]):
        with pytest.raises(SystemExit):
            gap.parse_args(bad)


def test_free_run_is_a_valid_job_that_holds_nothing_back(gap):
    from speechadapt.jobspec import JobSpec

    over = gap.free_overrides(12.0, 1e-3)
    job = JobSpec(name="gap-free", base_model="base@1", train_manifest="/d/t.jsonl", dev_manifest="/d/d.jsonl",
                  **over)
    assert job.problems() == []
    assert job.strategy == "finetune" and job.source_replay == 0.0 and job.max_source_regression > 0.9
    assert job.max_minutes == 12.0 and job.learning_rate == 1e-3


def test_fresh_sentences_skip_used_and_repeated_ones(gap):
    got = gap.fresh_sentences(["One two.", "three four", "one two", "Five six", "seven"], {"three four"}, 2)
    assert got == ["One two.", "Five six"]
    with pytest.raises(ValueError, match="only 1 of 3"):
        gap.fresh_sentences(["a b", "A B"], set(), 3)


def test_history_and_table(gap, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps({"history": [
        {"event": "train", "step": 10, "loss": 0.9},
        {"event": "eval", "step": 14, "loss": 0.8, "dev_wer": 0.25, "best_dev_wer": 0.25, "source_dev_wer": 0.2}]}))
    assert gap.eval_history(tmp_path) == [{"step": 14, "loss": 0.8, "dev_wer": 0.25, "source_dev_wer": 0.2}]
    assert gap.eval_history(tmp_path / "missing") == []
    s = {"wer": 0.4, "greedy_wer": 0.6}
    md = gap.table({"scores": {"base": {k: s for k in gap.SETS}, "free": {"dev": s}}})
    lines = md.splitlines()
    assert lines[0] == "| set | base | free |" and len(lines) == 2 + len(gap.SETS)
    assert "| 40.0% (60.0%) | 40.0% (60.0%) |" in lines[2] and lines[3].endswith("| 40.0% (60.0%) |  |")
