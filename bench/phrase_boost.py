#!/usr/bin/env python
"""Phrase boosting measured: domain words the model never learned, with and without `speech_contexts`.

    python bench/phrase_boost.py [--model base-en] [--boost 0] [--per-word 4] [--out bench/results/phrase_boost.json]

Domain set: carrier sentences around drug names (none in base-en's vocabulary or lexicon), spoken by espeak-ng
en-us/en-gb speaker variants the model was not trained on (f5, m6, m7, m8). Control set: sentences of the model's
own vocabulary by the same speakers, decoded with the same boost list, to show what boosting costs when the
phrases are not spoken. Reports recall of the domain words, WER on both sets and decoding time per utterance,
unboosted vs boosted (boost 0 = the server default). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DRUGS = ["ibuprofen", "amoxicillin", "ozempic", "lisinopril", "metformin", "atorvastatin", "omeprazole",
         "levothyroxine", "amlodipine", "gabapentin", "sertraline", "prednisone", "warfarin", "albuterol",
         "losartan", "simvastatin", "tramadol", "cetirizine", "naproxen", "doxycycline"]
CARRIERS = ["please order {} for today", "the doctor said to take {} twice a day", "we are out of {} again",
            "can you bring the {} from the office", "she asked if {} is still on the list"]
SPEAKERS = ["en-us+f5", "en-us+m6", "en-gb+m7", "en-gb+m8"]


def synth(folder: Path, rows: list[tuple[str, str]]) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (voice, text) in enumerate(rows):
        path = folder / f"{i:04d}.wav"
        if not path.is_file():
            subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)
        out.append({"audio": str(path), "text": text, "speaker": voice})
    return out


def domain_rows(per_word: int) -> list[tuple[str, str, str]]:
    """(speaker, sentence, drug), each drug in `per_word` sentences by rotating speakers and carriers."""
    rows = []
    for d, drug in enumerate(DRUGS):
        for k in range(per_word):
            rows.append((SPEAKERS[(d + k) % len(SPEAKERS)], CARRIERS[(d + 2 * k) % len(CARRIERS)].format(drug), drug))
    return rows


def control_rows(model, count: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    words = model.lexicon or []
    return [(SPEAKERS[i % len(SPEAKERS)], " ".join(rng.choice(words, size=int(rng.integers(4, 9)))))
            for i in range(count)]


def run_set(model, utts: list[dict], phrases) -> tuple[list[str], float]:
    from speechadapt.asr.audio import load_audio

    hyps, busy = [], 0.0
    for u in utts:
        logits = model.logits(load_audio(u["audio"], model.sample_rate))
        t0 = time.perf_counter()
        hyps.append(model.decode(logits, phrases=phrases)[0].text)
        busy += time.perf_counter() - t0
    return hyps, busy / max(1, len(utts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base-en", help="name[@version] (built in or in --model-store) or a package folder")
    p.add_argument("--model-store", default=None)
    p.add_argument("--boost", type=float, default=0.0, help="boost for every phrase (0 = the server default)")
    p.add_argument("--per-word", type=int, default=4, help="sentences per domain word (default 4)")
    p.add_argument("--control", type=int, default=60, help="control sentences (default 60)")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench" / "phrase_boost"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "phrase_boost.json"))
    args = p.parse_args(argv)

    import torch

    from speechadapt.asr import load_model
    from speechadapt.asr.beam import DEFAULT_BOOST, parse_phrases
    from speechadapt.asr.evaluation import error_rates

    torch.set_num_threads(1)
    model = load_model(args.model, store=args.model_store)
    known = set(model.lexicon or [])
    assert not known & set(DRUGS), "the domain words must be new to the model"
    work = Path(args.workdir)
    dom = domain_rows(args.per_word)
    domain = synth(work / "domain", [(s, t) for s, t, _ in dom])
    control = synth(work / f"control-{args.control}", control_rows(model, args.control, 5))
    phrases = parse_phrases([(DRUGS, args.boost)], model.tokenizer)

    rows = []
    for label, ph in (("no boosting", ()), (f"boost {args.boost or DEFAULT_BOOST:g} on {len(DRUGS)} names", phrases)):
        hyps, ms = run_set(model, domain, ph)
        recall = float(np.mean([drug in h.split() for (_, _, drug), h in zip(dom, hyps)]))
        dwer = error_rates([u["text"] for u in domain], hyps)[0]
        chyps, cms = run_set(model, control, ph)
        cwer = error_rates([u["text"] for u in control], chyps)[0]
        rows.append({"decoding": label, "domain_word_recall": recall, "domain_wer": dwer, "control_wer": cwer,
                     "decode_ms_per_utt": round(1000 * (ms * len(domain) + cms * len(control)) / (len(domain) + len(control)), 2),
                     "examples": [{"ref": u["text"], "hyp": h} for u, h in list(zip(domain, hyps))[:5]]})
    lines = ["| decoding | domain-word recall | domain WER | control WER | decode ms/utt |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['decoding']} | {100 * r['domain_word_recall']:.1f}% | {100 * r['domain_wer']:.1f}% | "
                     f"{100 * r['control_wer']:.1f}% | {r['decode_ms_per_utt']:.1f} |")
    print("\n".join(lines))
    result = {"model": model.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "bench/phrase_boost.py", *(argv if argv is not None else sys.argv[1:])]),
              "domain_words": DRUGS, "speakers": SPEAKERS, "domain_utterances": len(domain),
              "control_utterances": len(control), "rows": rows,
              "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                          "threads": 1}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
