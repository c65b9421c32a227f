"""Stream held-out utterances to the base and the adapted model on a running server; print transcripts and WERs.

    python deploy/demo_compare.py --server HOST:PORT --manifest test/manifest.jsonl --base base-en \
        [--adapted NAME@N] [--show 2] [--realtime]

Every utterance of the manifest ({"audio", "text", "speaker"?} per line, audio relative to the manifest) is
streamed once per model through the client library (`SpeechClient.stream_file`, final results joined). The
--show longest utterances are printed in full (reference, each model's transcript and its WER), then each
model's WER over the whole manifest. Without --adapted only the base model is asked. WER: jiwer on the
normalised texts, as `speechadapt.asr.evaluation.error_rates` computes it. Exit 1 when a call fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jiwer

from speechadapt.asr.text import normalize_text  # light: no torch
from speechadapt.client import SpeechAdaptError, SpeechClient


def wer(refs: list[str], hyps: list[str]) -> float:
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r]
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]) if pairs else float("nan")


def read_manifest(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["audio"] = str((path.parent / d["audio"]).resolve())
            out.append(d)
    return out


def transcribe(client: SpeechClient, audio: str, model: str, realtime: bool) -> tuple[str, str]:
    """(transcript, serving model "name@version") of one file, streamed."""
    texts, served = [], model
    for r in client.stream_file(audio, model=model, realtime=realtime):
        if r.is_final:
            texts.append(r.transcript)
            served = r.model or served
    return " ".join(t for t in texts if t).strip(), served


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, metavar="HOST:PORT")
    p.add_argument("--manifest", required=True, type=Path, help="held-out utterances (JSON lines)")
    p.add_argument("--base", default="base-en", help="base model ref (default: base-en)")
    p.add_argument("--adapted", default="", help="adapted model ref, e.g. base-en-gb-scotland@1 (default: none)")
    p.add_argument("--show", type=int, default=2, help="the N longest utterances are printed in full (default: 2)")
    p.add_argument("--realtime", action="store_true", help="stream at real-time pace")
    args = p.parse_args(argv)

    utts = read_manifest(args.manifest)
    models = [("base", args.base)] + ([("adapted", args.adapted)] if args.adapted else [])
    hyps: dict[str, list[str]] = {label: [] for label, _ in models}
    served: dict[str, str] = {}
    longest = sorted(range(len(utts)), key=lambda i: (-float(utts[i].get("duration") or 0), i))
    show = set(longest[:max(0, args.show)])
    t0 = time.monotonic()
    try:
        with SpeechClient(args.server) as client:
            for i, u in enumerate(utts):
                for label, ref in models:
                    text, served[label] = transcribe(client, u["audio"], ref, args.realtime and i in show)
                    hyps[label].append(text)
                if i in show:
                    print(f"\n[{i + 1}/{len(utts)}] {Path(u['audio']).name}  speaker {u.get('speaker', '?')}  "
                          f"{u.get('duration', 0):.1f} s  (held out: speaker and sentence unseen in training)")
                    print(f"  reference        {normalize_text(u['text'])}")
                    for label, _ in models:
                        print(f"  {label + ' ' + served[label]:<30s} WER {wer([u['text']], [hyps[label][-1]]):6.1%}  "
                              f"{hyps[label][-1]}")
    except SpeechAdaptError as e:
        print(f"demo: streaming failed: {e}", file=sys.stderr)
        return 1
    refs = [u["text"] for u in utts]
    print(f"\nall {len(utts)} held-out utterances ({sum(u.get('duration', 0) for u in utts) / 60:.1f} min, "
          f"streamed to {len(models)} model(s) in {time.monotonic() - t0:.0f} s):")
    for label, _ in models:
        print(f"  {label + ' ' + served[label]:<30s} WER {wer(refs, hyps[label]):6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
