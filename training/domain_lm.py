"""The word LM of an adaptation job with `domain_text` (JobSpec.domain_text): built from the domain text and, when
the base package carries an LM, mixed into it.

- base without an LM: the domain LM as `speechadapt lm build` makes it (order 3, the text's words plus the broad
  word list, so decoding is open beyond the domain's words);
- base with an LM: a 3-gram model of the domain text alone (its vocabulary is the text's words; the base LM brings
  the broad one) mixed with the base LM into one ARPA (`speechadapt.ngram.mix_arpa`), the domain weight the one
  with the lowest perplexity on the target dev transcripts (EM, as SRILM's compute-best-mix; within 0.01..0.99;
  the perplexity at 0.1, 0.2, ..., 0.9 is reported too); decoding settings stay the base LM's.

The folder (RUN_DIR/domain_lm: lm.arpa, lexicon.txt, lm.json with a "domain" section) is attached to the candidate
and to a copy of the base (to measure the base's WER with the domain LM). Built once: a re-run reuses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from speechadapt.lm import ARPA, DEFAULT_DECODING, INFO, LmBuildConfig, LmError, build, read_lm, read_sentences, sha256_file, write_lm
from speechadapt.ngram import best_mix_weight, estimate, mix_arpa, perplexity, read_arpa

ORDER = 3
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _dev_sentences(dev_manifest: str) -> list[list[str]]:
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.text import normalize_text

    return [s for s in (normalize_text(u.text).split() for u in read_manifest(dev_manifest)) if s]


def _text_sentences(texts: list[str], characters: tuple[str, ...]) -> tuple[list[list[str]], list[dict]]:
    sentences, sources = [], []
    for t in texts:
        sents = read_sentences(t)
        if not sents:
            raise LmError(f"domain_text {t} has no words after normalisation")
        bad = sorted({c for s in sents for w in s for c in w} - set(characters))
        if bad:
            raise LmError(f"domain_text has characters the base model cannot spell: {''.join(bad)}")
        sentences += sents
        sources.append({"sha256": sha256_file(t), "sentences": len(sents), "words": sum(len(s) for s in sents)})
    return sentences, sources


def build_job_lm(texts: list[str], base_path: str | Path, dev_manifest: str, characters: tuple[str, ...],
                 out: Path) -> dict:
    """Write the job's LM folder into `out` (kept when already there); returns its lm.json "domain" section:
    {"mode": "mixed" | "domain only", "weight", "weights" {w: dev ppl}, "dev_perplexity" {...}, "text" [...]}."""
    if (out / INFO).is_file():
        info = json.loads((out / INFO).read_text(encoding="utf-8"))
        if "domain" in info:
            read_lm(out, characters)
            return info["domain"]
    shutil.rmtree(out, ignore_errors=True)
    sentences, sources = _text_sentences(texts, characters)
    dev = _dev_sentences(dev_manifest)
    base_lm = Path(base_path) / "lm"
    if (base_lm / INFO).is_file():
        base_files = read_lm(base_lm, characters)
        base_model = read_arpa(base_files.arpa)
        domain = estimate(sentences, ORDER)
        weight, ppls = best_mix_weight(domain, base_model, dev, WEIGHTS)
        mixed = mix_arpa(domain, base_model, weight)
        section = {"mode": "mixed", "weight": weight, "weights": {str(w): round(v, 3) for w, v in ppls.items()},
                   "dev_perplexity": {"base_lm": round(perplexity(base_model, dev), 3),
                                      "domain_lm": round(perplexity(domain, dev), 3),
                                      "mixed": round(perplexity(mixed, dev), 3)},
                   "dev_sentences": len(dev), "text": sources, "order": ORDER,
                   "base_lm": {"sha256": base_files.info["files"][ARPA]["sha256"],
                               "vocabulary": base_files.info.get("vocabulary")}}
        write_lm(mixed, out, characters, base_files.decoding or dict(DEFAULT_DECODING),
                 {"smoothing": f"linear interpolation: {weight:g} x domain text (modified Kneser-Ney) + "
                               f"{1 - weight:g} x the base's LM", "domain": section})
        return section
    staging = out.with_name(out.name + ".text")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    joined = staging / "domain.txt"
    joined.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    build(LmBuildConfig(texts=(str(joined),), out=str(out), order=ORDER, characters=characters))
    model = read_arpa(out / ARPA)
    section = {"mode": "domain only", "weight": 1.0, "weights": {},
               "dev_perplexity": {"domain_lm": round(perplexity(model, dev), 3)}, "dev_sentences": len(dev),
               "text": sources, "order": ORDER}
    info = json.loads((out / INFO).read_text(encoding="utf-8"))
    info["domain"] = section
    info["sources"] = sources  # not the staging file's path
    (out / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.rmtree(staging, ignore_errors=True)
    return section


def with_lm(package: Path, lm_dir: Path, out: Path) -> Path:
    """A copy of `package` (without its own LM) at `out` with `lm_dir` attached; kept when already there."""
    from speechadapt.lm import attach, detach

    if (out / "lm" / INFO).is_file() and sha256_file(out / "lm" / INFO) == sha256_file(lm_dir / INFO):
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(package, out, ignore=shutil.ignore_patterns("lm"))
    detach(out)
    attach(out, lm_dir)
    return out
