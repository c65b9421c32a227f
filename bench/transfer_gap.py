#!/usr/bin/env python
"""Where the target WER left after adaptation comes from: the transfer curve's 5-minute cell, taken apart.

    python bench/transfer_gap.py [--minutes 5] [--free-minutes 12] [--free-lr 1e-3] [--out bench/results/transfer_gap.json]

The transfer curve (bench/transfer_curve.py) scores on speakers and sentences that no run trained on. This
benchmark asks whether what adaptation misses there is the unseen speakers, the unseen sentences, or the accent
itself, and whether more training would help. On the transfer curve's own sets (the same cache, the same base),
it runs two adaptation jobs on the N-minute target subset, one after the other on a private Ray head on 127.0.0.1:

* `default`: the job with the four required keys only (what a user gets; as the curve's default column).
* `free`: full fine-tuning with nothing held back: no source replay, no source limit on the checkpoints
  (max_source_regression 0.99), --free-lr, 2 CPUs, --free-minutes of training. Its dev WER by step shows whether
  the target data is used up (the dev WER stops falling while the training loss still falls) or the budget is.

Then the base and both candidates are scored (serving decoder and greedy) on five sets:

* `dev`: the jobs' target dev set (training speakers, train-split sentences, 20 utterances by default);
* `target test`: the curve's (4 unseen speakers, test-split sentences);
* `pool speakers x test sentences`: the training speakers reading test-split sentences (no unseen speaker);
* `test speakers x train sentences`: the unseen speakers reading other train-split sentences (no unseen
  sentence; none is in the pool or the dev set);
* `source test`: the curve's (en-us/en-gb, unseen speakers): forgetting.

Prints a markdown table, writes JSON (default bench/results/transfer_gap.json) with the free run's dev WER by step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import base_model as bm  # noqa: E402
import transfer_curve as tc  # noqa: E402

CROSS_UTTERANCES = 60
SETS = ("dev", "target_test", "pool_speakers_test_sentences", "test_speakers_train_sentences", "source_test")
LABELS = {"dev": "dev (training speakers, train-split sentences)",
          "target_test": "target test (unseen speakers, test-split sentences)",
          "pool_speakers_test_sentences": "training speakers x test-split sentences",
          "test_speakers_train_sentences": "unseen speakers x train-split sentences",
          "source_test": "source test (en-us/en-gb, unseen speakers)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base-en", help="base model (default: base-en; a CTC base)")
    p.add_argument("--minutes", type=float, default=5.0, help="target training audio (default: 5)")
    p.add_argument("--free-minutes", type=float, default=12.0, help="training time of the free run (default: 12)")
    p.add_argument("--free-lr", type=float, default=1e-3, help="learning rate of the free run (default: 1e-3)")
    p.add_argument("--utterances", type=int, default=CROSS_UTTERANCES,
                   help=f"utterances of each crossed set (default: {CROSS_UTTERANCES})")
    p.add_argument("--no-default", action="store_true", help="skip the default job")
    p.add_argument("--out", default=str(tc.REPO / "bench" / "results" / "transfer_gap.json"))
    a = p.parse_args(argv)
    if not 0 < a.free_minutes <= 120 or a.free_lr <= 0 or a.utterances < 5:
        p.error("--free-minutes in (0, 120], --free-lr > 0, --utterances >= 5")
    return a


def free_overrides(minutes: float, lr: float) -> dict:
    """The free run's spec keys: full fine-tuning, nothing held back, a wall-clock budget only."""
    return {"strategy": "finetune", "source_replay": 0.0, "max_source_regression": 0.99, "learning_rate": lr,
            "max_epochs": 1000, "max_minutes": minutes}


def fresh_sentences(candidates: list[str], used: set[str], count: int) -> list[str]:
    """The first `count` of `candidates` not in `used` (normalised text), in order, no repeats."""
    from speechadapt.asr.text import normalize_text

    out, seen = [], set(used)
    for s in candidates:
        key = normalize_text(s)
        if key not in seen:
            seen.add(key)
            out.append(s)
        if len(out) == count:
            return out
    raise ValueError(f"only {len(out)} of {count} sentences are not already used")


def crossed_sets(info, data: dict, workdir: Path, n: int, jobs: int) -> dict[str, str]:
    """The two crossed sets (synthesised once, cached like the curve's sets): {name: manifest}."""
    from speechadapt.asr.text import normalize_text

    recipe, seed = data["recipe"], data["recipe"]["seed"]
    used = {normalize_text(r["text"]) for key in ("pool", "dev") for r in bm._read_jsonl(Path(data[key]["manifest"]))}
    test_text = [r["text"] for r in bm._read_jsonl(Path(data["target_test"]["manifest"]))]
    test_text = list(dict.fromkeys(test_text))[:n]
    train_text = fresh_sentences(tc.natural_sentences(workdir, "train", seed + 77, 4 * n), used, n)
    acc, espeak = recipe["target_accent"], recipe["espeak_ng"]
    out = {}
    for name, variants, text, s in (("pool_speakers_test_sentences", recipe["train_variants"], test_text, seed + 3),
                                    ("test_speakers_train_sentences", recipe["test_variants"], train_text, seed + 9)):
        manifest, _ = tc.synth_cached(workdir, f"{acc}-x-{name}", [acc], variants, text, s, info, espeak,
                                      jobs=jobs)
        rows = bm._read_jsonl(manifest)
        out[name] = str(tc.write_manifest(manifest.parent / "abs.jsonl", rows, manifest.parent))
    return out


def eval_history(run_dir: Path) -> list[dict]:
    """The job's evaluations: [{step, loss, dev_wer, source_dev_wer}] from its report."""
    report = tc.read_json(run_dir / "report" / "metrics.json") or {}
    return [{k: e.get(k) for k in ("step", "loss", "dev_wer", "source_dev_wer")}
            for e in report.get("history", []) if e.get("event") == "eval"]


def table(result: dict) -> str:
    names = list(result["scores"])
    lines = ["| set | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key in SETS:
        cells = []
        for m in names:
            s = result["scores"][m].get(key)
            cells.append("" if s is None else f"{tc._pct(s['wer'])} ({tc._pct(s['greedy_wer'])})")
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from speechadapt.asr.inference import load_model

    curve = tc.parse_args(["--model", args.model, "--sizes", f"{args.minutes:g}", "--no-fsdd", "--no-scratch"])
    base = load_model(curve.model, store=curve.model_store)
    if getattr(base.card, "architecture", "") == tc.WHISPER:
        print("error: bench/transfer_gap.py takes a CTC base (Whisper's curve has its own sets)", file=sys.stderr)
        return 2
    workdir = Path(curve.workdir)
    info = bm.training_info(base.card, base.ref.path, None)
    data = tc.build_data(curve, info, workdir)
    sets = {"dev": data["dev"]["manifest"], "target_test": data["target_test"]["manifest"],
            **crossed_sets(info, data, workdir, args.utterances, curve.jobs), "source_test": data["source_test"]["manifest"]}
    train = data["subsets"][args.minutes]
    t0 = time.monotonic()
    root = workdir / "gap" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    store = root / "store"
    shutil.copytree(base.ref.path, store / "base" / "1")
    result = {"model": base.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "bench/transfer_gap.py", *(argv if argv is not None else sys.argv[1:])]),
              "minutes": args.minutes, "train": train,
              "sets": {k: {"manifest": v, "utterances": len(bm._read_jsonl(Path(v)))} for k, v in sets.items()},
              "free_spec": free_overrides(args.free_minutes, args.free_lr), "runs": {}, "scores": {}}
    result["scores"]["base"] = tc.score(base.ref.path, sets)
    tc._log("base scored")
    runs = ([] if args.no_default else [(tc.DEFAULT_JOB, None)]) + [("free", free_overrides(args.free_minutes, args.free_lr))]
    with tc.RayHead(None, 2) as head:
        for name, overrides in runs:
            curve.cpus_per_worker = 1.0 if overrides is None else 2.0
            run_dir = root / name
            tc._log(f"{name} run in {run_dir}")
            run = tc.run_adapt(curve, head.address, store, run_dir, f"gap-{name}",
                               tc.DEFAULT_JOB if overrides is None else overrides["strategy"], train,
                               data["dev"]["manifest"], data["source_dev"]["manifest"], args.minutes, overrides)
            run["history"] = eval_history(run_dir)
            result["runs"][name] = run
            if "error" in run:
                print(f"error: {name}: {run['error']}", file=sys.stderr)
                continue
            result["scores"][name] = tc.score(run.pop("candidate"), sets, store=store)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    result["machine"] = bm.machine_info("cpu")
    result["markdown"] = table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(result["markdown"])
    for name, run in result["runs"].items():
        print(f"\n{name}: {run.get('steps')} steps, best at step {run.get('best_step')}; dev WER by step: "
              + ", ".join(f"{e['step']}: {tc._pct(e['dev_wer'])}" for e in run["history"]))
    print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
