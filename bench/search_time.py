"""How long a search job takes against one run: the same data, base and per-trial budget, on this machine.

Data: one FSDD speaker (default nicolas, Belgian French), N of his utterances to train on, takes 10-12 as dev
(`speaker_adapt.split`). Job A: one run (`strategy: head`, the Whisper default at this size). Job B: the same job
file plus `search: {trials: 4}` (head and adapters, learning rates x1 and x1/3, replay 0.25 and 0.125), trials as
many at a time as the local Ray head's CPUs hold. Each is `python -m speechadapt.training.adapt` with its own
local Ray head, as the server runs it; wall time includes the baseline, every trial, evaluation and publish.
The issue's target: a 4-trial search within 3x the time of one trial on 2 cores.

    python bench/search_time.py [--speaker nicolas] [--train 20] [--minutes 2] [--trials 4] [--base whisper-tiny-en]
        [--out bench/results/search_time.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from speaker_adapt import ROOT, run_job, split, workspace  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speaker", default="nicolas")
    p.add_argument("--train", type=int, default=20, help="training utterances")
    p.add_argument("--minutes", type=float, default=2.0, help="max_minutes of training per run / trial")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--base", default="whisper-tiny-en")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_time.json"))
    args = p.parse_args(argv)
    ws = workspace("search-time-")
    if ws is None:
        return 0
    work, store = ws
    paths = split(args.speaker, args.train, work / "data")
    rows = {}
    for label, keys in (("one run", {"strategy": "head"}), (f"search, {args.trials} trials", {"search": {"trials": args.trials}})):
        job_dir = work / label.split(",")[0].replace(" ", "-")
        job_dir.mkdir()
        job = run_job(store, args.base, paths, job_dir, f"{args.base}-{args.speaker}-{job_dir.name}",
                      max_minutes=args.minutes, **keys)
        report = json.loads((job_dir / "run" / "report" / "metrics.json").read_text()) if job["exit"] == 0 else {}
        rows[label] = {**job, "search": report.get("search")}
        m = job["result"].get("metrics", {})
        print(f"{label}: exit {job['exit']} in {job['seconds']:.0f} s, promoted {job['result'].get('promoted')}, "
              f"target dev {m.get('base_target_wer', float('nan')):.1%} -> {m.get('adapted_target_wer', float('nan')):.1%}, "
              f"source dev {m.get('base_source_wer', float('nan')):.1%} -> {m.get('adapted_source_wer', float('nan')):.1%}",
              flush=True)
    one, many = rows.values()
    ratio = many["seconds"] / one["seconds"]
    out = {"base": args.base, "speaker": args.speaker, "train_utterances": args.train, "minutes_per_trial": args.minutes,
           "trials": args.trials, "ratio": round(ratio, 2), "rows": rows, "work": str(work)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("\n| job | wall s | target dev WER base -> adapted | source dev WER base -> adapted | promoted |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, r in rows.items():
        m = r["result"].get("metrics", {})
        print(f"| {label} | {r['seconds']:.0f} | {m.get('base_target_wer', float('nan')):.1%} -> "
              f"{m.get('adapted_target_wer', float('nan')):.1%} | {m.get('base_source_wer', float('nan')):.1%} -> "
              f"{m.get('adapted_source_wer', float('nan')):.1%} | {r['result'].get('promoted')} |")
    if many.get("search"):
        print("\n| trial | strategy | lr | replay | best target dev WER | source dev WER | steps | train s |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in many["search"]["trials"]:
            fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
            print(f"| {t['index'] + 1}{' (best)' if t['index'] == many['search']['best'] else ''} | {t['strategy']} | "
                  f"{t['lr']:g} | {t['source_replay']:g} | {fmt(t.get('best_dev_wer'))} | {fmt(t.get('source_dev_wer'))} | "
                  f"{t.get('steps', '-')} | {t.get('train_seconds', '-')} |")
    print(f"\nsearch / one run: {ratio:.2f}x (target: <= 3x); results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
