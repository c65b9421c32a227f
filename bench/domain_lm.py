"""What a job's `domain_text` buys: base-en on kitchen sentences decoded over its own lexicon alone (no LM), with
the general LM it ships, with the domain text's own LM (what a job builds for a base without an LM) and with the
domain text mixed into the shipped LM (what a job on base-en builds: weight by dev perplexity).

    python bench/domain_lm.py [--out bench/results/domain_lm.json] [--work DIR]

Text: bench/data/kitchen_train.txt (60 sentences, the job's domain_text), kitchen_dev.txt (10, the job's dev
transcripts: only their text picks the weight), kitchen_test.txt (20 other sentences, spoken). General LM: the
one base-en ships (`make base-en`: 40,000 `data text` sentences + the broad word list). Audio:
espeak-ng en-us and en-gb, speaker variants base-en never heard (f5 m6 m7 m8). A general-English check: the 20
Harvard sentences of bench/data/ordinary_sentences.txt, spoken the same way, with each LM. WER after normalisation.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
BASE = ROOT / "asr" / "models" / "base-en"
VARIANTS = ["f5", "m6", "m7", "m8"]


def _speak(sentences: Path, out: Path, seed: int) -> Path:
    from speechadapt.training.synth import SynthConfig, synthesize

    if not (out / "manifest.jsonl").is_file():
        lines = [l for l in sentences.read_text().splitlines() if l.strip() and not l.startswith("#")]
        synthesize(SynthConfig(out_dir=out, voices=["en-us", "en-gb"], variants=VARIANTS, sentences_file=sentences,
                               count=len(lines), seed=seed, quiet=True))
    return out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "domain_lm.json")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-domain-lm")
    a = ap.parse_args(argv)
    from speechadapt.asr.evaluation import evaluate
    from speechadapt.asr.inference import load_model
    from speechadapt.lm import detach
    from speechadapt.training.domain_lm import build_job_lm, with_lm

    t0 = time.monotonic()
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    harvard = work / "harvard.txt"
    harvard.write_text("\n".join([l for l in (DATA / "ordinary_sentences.txt").read_text().splitlines()
                                  if l.strip() and not l.startswith("#")][:20]) + "\n")
    test = _speak(DATA / "kitchen_test.txt", work / "kitchen_test", 21)
    dev = _speak(DATA / "kitchen_dev.txt", work / "kitchen_dev", 22)
    general_test = _speak(harvard, work / "harvard_test", 23)

    characters = tuple(json.loads((BASE / "model.json").read_text())["tokenizer"]["tokens"][2:])
    for stale in ("pkg-none", "pkg-domain", "pkg-mixed", "lm-domain", "lm-mixed"):  # built from the base: afresh
        shutil.rmtree(work / stale, ignore_errors=True)
    bare = work / "pkg-none"
    shutil.copytree(BASE, bare)
    detach(bare)
    texts = [str(DATA / "kitchen_train.txt")]
    t = time.monotonic()
    domain_only = build_job_lm(texts, bare, str(dev), characters, work / "lm-domain")
    domain_s = time.monotonic() - t
    t = time.monotonic()
    mixed = build_job_lm(texts, BASE, str(dev), characters, work / "lm-mixed")
    mixed_s = time.monotonic() - t
    models = {
        "its own lexicon alone (no LM)": bare,
        "the LM base-en ships (general: 40k data text sentences + broad list)": BASE,
        "domain text alone (job on a base without an LM)": with_lm(bare, work / "lm-domain", work / "pkg-domain"),
        f"domain text mixed into the shipped LM (job on base-en, weight {mixed['weight']:g})":
            with_lm(BASE, work / "lm-mixed", work / "pkg-mixed"),
    }
    lex = {l.split("\t")[0] for l in (BASE / "lexicon.txt").read_text().splitlines()}
    words = [w for l in (DATA / "kitchen_test.txt").read_text().splitlines() for w in re.findall(r"[a-z']+", l.lower())]
    rows = []
    for name, pkg in models.items():
        model = load_model(pkg)
        r_k, r_g = evaluate(model, test), evaluate(model, general_test)
        rows.append({"decoding": name, "kitchen_test_wer": round(r_k.wer, 4), "harvard_wer": round(r_g.wer, 4),
                     "utterances": r_k.utterances})
        print(f"{name:<70} kitchen {r_k.wer:6.1%}   Harvard {r_g.wer:6.1%}", flush=True)
    out = {"rows": rows, "mixed": mixed, "domain_only": domain_only, "build_seconds": {"domain": round(domain_s, 1),
                                                                                     "mixed": round(mixed_s, 1)},
           "test_tokens": len(words), "test_tokens_outside_base_lexicon": sum(w not in lex for w in words),
           "voices": ["en-us", "en-gb"], "variants": VARIANTS, "wall_seconds": round(time.monotonic() - t0, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print("\n| decoding | kitchen test WER (20 utts) | Harvard WER (20 utts) |\n| --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['decoding']} | {r['kitchen_test_wer']:.1%} | {r['harvard_wer']:.1%} |")
    ppl = mixed["dev_perplexity"]
    print(f"\nweight {mixed['weight']:g} (dev perplexity by weight: {mixed['weights']}); dev perplexity: shipped LM "
          f"{ppl['base_lm']:.1f}, domain text alone {ppl['domain_lm']:.1f}, mixed {ppl['mixed']:.1f}; "
          f"domain-only LM {domain_only['dev_perplexity']['domain_lm']:.1f}; {out['test_tokens_outside_base_lexicon']}"
          f"/{out['test_tokens']} test words outside base-en's lexicon; {out['wall_seconds']:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
