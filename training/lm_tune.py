"""`speechadapt lm tune`: choose the decoding weights of a package's word LM (lm_weight, lm_word_score) on a dev set.

The acoustic model runs once over the dev manifest; every point of the grid re-decodes the same logits with the
package's LM (KenLM and the lexicon trie are loaded once and shared: the weights do not enter them). The lowest
dev WER wins; on a tie the setting already in lm.json stays, then the smaller LM weight. The choice is written
into the package's lm/lm.json ("decoding", plus a "tuned" section: the dev manifest's sha256, its size and the
WER of every setting) and re-attached, so model.json's sha256 of lm/lm.json follows. Serving, adaptation jobs
(their candidates inherit the base's LM) and mixed domain LMs (they keep the base LM's decoding) all use it.

Tune on a dev set, never on the test set the model is benchmarked on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from speechadapt.lm import INFO, PACKAGE_DIR, LmError, _write_json, attach, sha256_file

LM_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
WORD_SCORES = (-1.0, 0.0, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class TuneConfig:
    model: str  # a model package folder with lm/ (from `lm build --attach` or `lm attach`)
    dev_manifest: str
    lm_weights: tuple[float, ...] = LM_WEIGHTS
    word_scores: tuple[float, ...] = WORD_SCORES
    max_utterances: int = 0  # 0: the whole manifest
    write: bool = True  # False: report only, the package stays as it is


def _check(cfg: TuneConfig) -> None:
    if not cfg.lm_weights or not cfg.word_scores:
        raise LmError("give at least one LM weight and one word score")
    if any(not 0.0 <= w <= 10.0 for w in cfg.lm_weights):
        raise LmError(f"LM weights must lie in [0, 10], not {list(cfg.lm_weights)}")
    if any(not -10.0 <= s <= 10.0 for s in cfg.word_scores):
        raise LmError(f"word scores must lie in [-10, 10], not {list(cfg.word_scores)}")
    if cfg.max_utterances < 0:
        raise LmError(f"max_utterances must be 0 (all) or positive, not {cfg.max_utterances}")
    if not (Path(cfg.model) / PACKAGE_DIR / INFO).is_file():
        raise LmError(f"{cfg.model} has no word LM ({PACKAGE_DIR}/{INFO}): attach one first "
                      "(`speechadapt lm build ... --attach MODEL_DIR`)")


def tune(cfg: TuneConfig, log=print) -> dict:
    """Decode the dev set at every grid point; returns {"chosen", "before", "grid": [...], ...} and, with
    cfg.write, records the chosen weights in the package."""
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.evaluation import error_rates
    from speechadapt.asr.inference import load_model
    from speechadapt.asr.manifest import read_manifest

    _check(cfg)
    model = load_model(Path(cfg.model))
    utts = read_manifest(cfg.dev_manifest)
    if cfg.max_utterances:
        utts = utts[: cfg.max_utterances]
    if not utts:
        raise LmError(f"{cfg.dev_manifest} lists no utterances")
    t0 = time.perf_counter()
    logits = [model.logits(load_audio(u.audio, model.sample_rate)) for u in utts]
    refs = [u.text for u in utts]
    log(f"acoustic model over {len(utts)} dev utterances: {time.perf_counter() - t0:.1f} s")
    current = model.beam.cfg
    now = (current.lm_weight, current.lm_word_score)
    points = list(itertools.product(sorted(set(cfg.lm_weights)), sorted(set(cfg.word_scores))))
    if now not in points:
        points.append(now)
    grid = []
    for weight, score in points:
        decoder = model.beam.with_config(replace(current, lm_weight=weight, lm_word_score=score))
        t = time.perf_counter()
        hyps = [decoder.decode(lg, model.frame_seconds)[0].text for lg in logits]
        seconds = time.perf_counter() - t
        wer, cer = error_rates(refs, hyps)
        grid.append({"lm_weight": weight, "lm_word_score": score, "wer": round(wer, 5), "cer": round(cer, 5),
                     "ms_per_utterance": round(1000 * seconds / len(logits), 2)})
        log(f"  lm_weight {weight:4.2f}  word score {score:+5.2f}  WER {wer:6.1%}  CER {cer:6.1%}")
    before = grid[points.index(now)]
    best = min(grid, key=lambda r: (r["wer"], (r["lm_weight"], r["lm_word_score"]) != now, r["lm_weight"]))
    result = {"chosen": {"lm_weight": best["lm_weight"], "lm_word_score": best["lm_word_score"]},
              "dev_wer": best["wer"], "before": {"lm_weight": now[0], "lm_word_score": now[1], "dev_wer": before["wer"]},
              "dev_manifest": str(cfg.dev_manifest), "dev_sha256": sha256_file(cfg.dev_manifest),
              "utterances": len(utts), "grid": grid}
    if cfg.write:
        _record(Path(cfg.model), result)
    return result


def _record(model: Path, result: dict) -> None:
    """lm.json gets the chosen decoding and a "tuned" section; attach() re-lists it (sha256) in model.json."""
    with tempfile.TemporaryDirectory(dir=model.parent, prefix=f".{model.name}-lm-tune-") as tmp:
        staged = Path(tmp) / PACKAGE_DIR
        shutil.copytree(model / PACKAGE_DIR, staged)
        info = json.loads((staged / INFO).read_text(encoding="utf-8"))
        info["decoding"] = {**(info.get("decoding") or {}), **result["chosen"]}
        info["tuned"] = {k: result[k] for k in ("dev_manifest", "dev_sha256", "utterances", "dev_wer", "before",
                                                "grid")}
        _write_json(staged / INFO, info)
        attach(model, staged)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model package folder that carries a word LM")
    p.add_argument("--dev", required=True, metavar="MANIFEST",
                   help="dev manifest (JSONL: audio, text) to tune on; not the set you benchmark on")
    p.add_argument("--lm-weights", type=float, nargs="+", default=list(LM_WEIGHTS), metavar="W",
                   help=f"LM weights to try (default: {' '.join(f'{w:g}' for w in LM_WEIGHTS)})")
    p.add_argument("--word-scores", type=float, nargs="+", default=list(WORD_SCORES), metavar="S",
                   help=f"per-word scores to try (default: {' '.join(f'{s:g}' for s in WORD_SCORES)})")
    p.add_argument("--max-utterances", type=int, default=0, metavar="N", help="tune on the first N only (0: all)")
    p.add_argument("--dry-run", action="store_true", help="report the grid, leave the package as it is")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = TuneConfig(model=args.model, dev_manifest=args.dev, lm_weights=tuple(args.lm_weights),
                     word_scores=tuple(args.word_scores), max_utterances=args.max_utterances, write=not args.dry_run)
    try:
        result = tune(cfg, log=(lambda *a, **k: None) if args.json else print)
    except ImportError as e:
        print(f"error: lm tune runs the acoustic model, which needs the server extra: pip install 'speechadapt[server]' "
              f"({e})", file=sys.stderr)
        return 2
    except (LmError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, c = result["before"], result["chosen"]
        print(f"dev WER {b['dev_wer']:.1%} at lm_weight {b['lm_weight']:g}, word score {b['lm_word_score']:g} -> "
              f"{result['dev_wer']:.1%} at lm_weight {c['lm_weight']:g}, word score {c['lm_word_score']:g} "
              f"({result['utterances']} utterances)" + ("" if cfg.write else "; not written (--dry-run)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m speechadapt.training.lm_tune", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
