"""Adapting the default model to one real speaker: FSDD digits, default job (the four required keys only).

For each speaker: train on N of his utterances (takes 5.., spread over the ten digits), dev on takes 10-12
(30 utterances), test on the dataset's test split (takes 0-4, 50 utterances, never trained on). The job is
`python -m speechadapt.training.adapt` with its own local Ray head (as the server runs it); the base and the
adapted package are then scored on the test takes with the served decoder (CTranslate2), beside pocketsphinx.

    python bench/speaker_adapt.py [--speakers nicolas,theo] [--sizes 10,20,50] [--base whisper-tiny-en]
        [--domain-text train] [--out bench/results/speaker_adapt.json]

--domain-text train adds `domain_text:` to the job file: a text file of the training utterances' transcripts
(what a user who adapts has anyway), so the job mixes a word LM of them into the base's LM (CTC bases only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"


def take(row: dict) -> int:
    return int(Path(row["audio"]).stem.split("_")[2])


def split(speaker: str, n_train: int, out: Path) -> dict[str, Path]:
    """Manifests (absolute audio paths): train = the first n_train of takes 5.. (digit by digit, round robin),
    dev = takes 10-12, test = takes 0-4."""
    rows = [json.loads(line) for line in (FSDD / "manifest.jsonl").read_text().splitlines()]
    mine = [dict(r, audio=str((FSDD / r["audio"]).resolve())) for r in rows if r["speaker"] == speaker]
    pool = sorted((r for r in mine if take(r) >= 5 and not 10 <= take(r) < 13), key=lambda r: (take(r), r["text"]))
    parts = {"train": pool[:n_train], "dev": [r for r in mine if 10 <= take(r) < 13], "test": [r for r in mine if take(r) < 5]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rs in parts.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rs))
    return paths


def transcripts(manifest: Path, out: Path) -> Path:
    """The manifest's transcripts, one per line, at `out` (the job's domain_text)."""
    out.write_text("".join(json.loads(line)["text"] + "\n" for line in manifest.read_text().splitlines()))
    return out


def score(model_path_or_ref: str, manifest: Path, store: Path | None = None) -> dict:
    from speechadapt.asr.evaluation import evaluate
    from speechadapt.asr.inference import load_model

    model = load_model(model_path_or_ref, store=store)
    r = evaluate(model, manifest)
    return {"wer": round(r.wer, 4), "cer": round(r.cer, 4), "rtf": round(r.rtf, 3)}


def pocketsphinx_wer(manifest: Path) -> float:
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).parent))
    from streaming import Utt, pocketsphinx_on  # noqa: E402

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    utts = []
    for r in rows:
        x, rate = sf.read(r["audio"], dtype="int16")
        utts.append(Utt(Path(r["audio"]).stem, r["text"], x, rate))
    return round(pocketsphinx_on(utts)["wer"], 4)


def run_job(store: Path, base: str, paths: dict, work: Path, name: str, **keys) -> dict:
    """One adaptation job (the four required keys, plus `keys` where given) with its own local Ray head."""
    spec = {"name": name, "base_model": base, "train_manifest": str(paths["train"]), "dev_manifest": str(paths["dev"]),
            **{k: v for k, v in keys.items() if v not in ("", None)}}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "speechadapt.training.adapt", "--spec", str(work / "spec.json"),
                           "--store", str(store), "--run-dir", str(work / "run"), "--job-id", name],
                          capture_output=True, text=True, env=env)
    (work / "job.log").write_text(proc.stdout + proc.stderr)
    from speechadapt.training.adapt import parse_events

    events = parse_events(proc.stdout)
    result = events[-1].get("result", {}) if events else {}
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - t0, 1), "result": result,
            "choices": [e["message"] for e in events if e["phase"] == "validate" and "auto ->" in e["message"]]}


def workspace(prefix: str) -> tuple[Path, Path] | None:
    """(a new temp folder, an empty model store in it) with the default Whisper model built; None (and a line
    saying so) without ../shared/data/fsdd."""
    if not FSDD.is_dir():
        print(f"{FSDD} is absent: nothing to measure")
        return None
    from speechadapt.asr.importers import ensure_default_whisper

    ensure_default_whisper()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "store").mkdir()
    return work, work / "store"


def save(args, rows: list[dict], work_root: Path) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"base": args.base, "strategy": args.strategy or "auto",
                               "domain_text": args.domain_text or "none", "command": " ".join(sys.argv),
                               "rows": rows, "work": str(work_root)}, indent=1) + "\n")
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", default="nicolas,theo")
    p.add_argument("--sizes", default="10,20,50")
    p.add_argument("--base", default="whisper-tiny-en")
    p.add_argument("--strategy", default="", choices=["", "head", "adapters", "finetune"],
                   help="a fifth key in the job file (default: none, the job chooses)")
    p.add_argument("--domain-text", default="", choices=["", "train"],
                   help="train: domain_text from the training transcripts (a CTC base's LM; default: none)")
    p.add_argument("--out", default=None,
                   help="JSON results (default: bench/results/speaker_adapt[.STRATEGY].json)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" / f"speaker_adapt{'.' + args.strategy if args.strategy else ''}.json")
    ws = workspace("speaker-adapt-")
    if ws is None:
        return 0
    work_root, store = ws
    from speechadapt.asr.package import read_card
    from speechadapt.asr.store import ModelStore

    rows = []
    for speaker in args.speakers.split(","):
        base_paths = split(speaker, 10, work_root / speaker / "base")
        base = {"test": score(args.base, base_paths["test"]), "pocketsphinx_test_wer": pocketsphinx_wer(base_paths["test"])}
        print(f"{speaker}: base {args.base} test WER {base['test']['wer']:.1%}, pocketsphinx {base['pocketsphinx_test_wer']:.1%}", flush=True)
        for n in [int(x) for x in args.sizes.split(",")]:
            work = work_root / speaker / str(n)
            paths = split(speaker, n, work)
            name = f"{args.base}-{speaker}-{n}"
            keys = {"strategy": args.strategy}
            if args.domain_text == "train":
                keys["domain_text"] = [str(transcripts(paths["train"], work / "domain.txt"))]
            job = run_job(store, args.base, paths, work, name, **keys)
            res = job["result"]
            row = {"speaker": speaker, "train_utterances": n, "base_test": base["test"],
                   "pocketsphinx_test_wer": base["pocketsphinx_test_wer"], **job}
            if res.get("promoted"):
                ref = ModelStore(store).resolve(f"{res['model']}@{res['version']}")
                row["adapted_test"] = score(str(ref.path), paths["test"])
                card = read_card(ref.path)
                row["package_mb"] = round(card.files_bytes / 2**20, 2)
                row["adapter_base"] = card.base.get("model", "")
            rows.append(row)
            save(args, rows, work_root)  # after every row: an interrupted run keeps what it measured
            m = res.get("metrics", {})
            print(f"  {n} utts: exit {job['exit']} in {job['seconds']:.0f} s, promoted {res.get('promoted')}, "
                  f"dev {m.get('base_target_wer', float('nan')):.1%} -> {m.get('adapted_target_wer', float('nan')):.1%}, "
                  f"source {m.get('base_source_wer', float('nan')):.1%} -> {m.get('adapted_source_wer', float('nan')):.1%}, "
                  f"test {base['test']['wer']:.1%} -> {row.get('adapted_test', {}).get('wer', float('nan')):.1%}; "
                  f"{res.get('reason', '')}", flush=True)
    save(args, rows, work_root)
    print("| speaker | train utts | test WER base | test WER adapted | pocketsphinx | source dev WER base -> adapted | promoted | job s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        m = r["result"].get("metrics", {})
        ad = r.get("adapted_test", {}).get("wer")
        print(f"| {r['speaker']} | {r['train_utterances']} | {r['base_test']['wer']:.1%} | "
              f"{'-' if ad is None else f'{ad:.1%}'} | {r['pocketsphinx_test_wer']:.1%} | "
              f"{m.get('base_source_wer', 0):.1%} -> {m.get('adapted_source_wer', 0):.1%} | {r['result'].get('promoted')} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
