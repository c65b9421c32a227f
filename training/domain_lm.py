"""The word LM of an adaptation job with `domain_text` (JobSpec.domain_text): built from the domain text and, when
the base package carries an LM, mixed into it.

- base without an LM: the domain LM as `speechadapt lm build` makes it (order 3, the text's words plus the broad
  word list, so decoding is open beyond the domain's words);
- base with an LM: a 3-gram model of the domain text alone (its vocabulary is the text's words; the base LM brings
  the broad one) mixed with the base LM into one ARPA (`speechadapt.ngram.mix_arpa`); decoding settings stay the
  base LM's. `build_job_lm` takes the domain weight with the lowest perplexity on the target dev transcripts (EM,
  as SRILM's compute-best-mix; within 0.01..0.99; the perplexity at 0.1, 0.2, ..., 0.9 is reported too).
  `choose_job_lm` (what a job runs) then decodes with the adapted model: perplexity cannot see what a weight
  costs the source domain (digit transcripts pick 0.99, and sentences then decode as digits), so the candidate is
  decoded on the target and source dev sets with the base LM alone (weight 0), with the mix at each of
  DECODE_WEIGHTS below the perplexity weight, and at the perplexity weight; the weight with the lowest target dev
  WER whose source dev WER stays within the job's limit wins (ties: the lower source WER, then the higher weight).

The folder (RUN_DIR/domain_lm: lm.arpa, lexicon.txt, lm.json with a "domain" section) is attached to the candidate
and to a copy of the base (to measure the base's WER with the domain LM). Built once: a re-run reuses it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from speechadapt.lm import ARPA, DEFAULT_DECODING, INFO, LEXICON, LmBuildConfig, LmError, build, read_lm, read_sentences, sha256_file, write_lm
from speechadapt.ngram import best_mix_weight, estimate, mix_arpa, perplexity, read_arpa

ORDER = 3
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DECODE_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)  # decoded by choose_job_lm, beside 0 and the perplexity weight


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
    return _build(texts, base_path, dev_manifest, characters, out)[0]


def _build(texts: list[str], base_path: str | Path, dev_manifest: str, characters: tuple[str, ...],
           out: Path) -> tuple[dict, _Mix | None]:
    """build_job_lm's section, and the two models it mixed (None when it mixed nothing or reused the folder)."""
    if (out / INFO).is_file():
        info = json.loads((out / INFO).read_text(encoding="utf-8"))
        if "domain" in info:
            read_lm(out, characters)
            return info["domain"], None
    shutil.rmtree(out, ignore_errors=True)
    sentences, sources = _text_sentences(texts, characters)
    dev = _dev_sentences(dev_manifest)
    base_lm = Path(base_path) / "lm"
    if (base_lm / INFO).is_file():
        mix = _Mix(sentences, base_lm, characters)
        weight, ppls = best_mix_weight(mix.domain, mix.base, dev, WEIGHTS)
        mixed = mix_arpa(mix.domain, mix.base, weight)
        section = {"mode": "mixed", "weight": weight, "weights": {str(w): round(v, 3) for w, v in ppls.items()},
                   "dev_perplexity": {"base_lm": round(perplexity(mix.base, dev), 3),
                                      "domain_lm": round(perplexity(mix.domain, dev), 3),
                                      "mixed": round(perplexity(mixed, dev), 3)},
                   "dev_sentences": len(dev), "text": sources, "order": ORDER,
                   "base_lm": {"sha256": mix.files.info["files"][ARPA]["sha256"],
                               "vocabulary": mix.files.info.get("vocabulary")}}
        mix.write(weight, out, section, mixed)
        return section, mix
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
    return section, None


def _set_domain(folder: Path, section: dict) -> None:
    """Replace the "domain" section of an LM folder's lm.json (its files' sha256 stay what they are)."""
    info = {**json.loads((folder / INFO).read_text(encoding="utf-8")), "domain": section}
    tmp = folder / (INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(folder / INFO)


class _Mix:
    """The domain text's 3-gram model and the base's LM, read once, to write their mix at any weight."""

    def __init__(self, sentences: list[list[str]], base_lm: Path, characters: tuple[str, ...]):
        self.base_dir, self.characters = base_lm, characters
        self.files = read_lm(base_lm, characters)
        self.base = read_arpa(self.files.arpa)
        self.domain = estimate(sentences, ORDER)

    def write(self, weight: float, out: Path, section: dict, mixed=None) -> None:
        """The LM folder of the mix at `weight` (0: the base's LM files as they are) with `section` as lm.json's
        "domain"."""
        if weight == 0:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for name in (ARPA, LEXICON, INFO):
                shutil.copyfile(self.base_dir / name, out / name)
            _set_domain(out, section)
            return
        write_lm(mixed or mix_arpa(self.domain, self.base, weight), out, self.characters,
                 self.files.decoding or dict(DEFAULT_DECODING),
                 {"smoothing": f"linear interpolation: {weight:g} x domain text (modified Kneser-Ney) + "
                               f"{1 - weight:g} x the base's LM", "domain": section})


def pick_weight(rows: list[dict], source_limit: float) -> dict:
    """The row ({"weight", "target_dev_wer", "source_dev_wer"}) with the lowest target dev WER among those whose
    source dev WER is within `source_limit` (ties: the lower source WER, then the higher weight: the domain text
    the user gave, where the dev sets cannot tell); none within: the lowest source WER."""
    within = [r for r in rows if r["source_dev_wer"] <= source_limit + 1e-9]
    if within:
        return min(within, key=lambda r: (r["target_dev_wer"], r["source_dev_wer"], -r["weight"]))
    return min(rows, key=lambda r: (r["source_dev_wer"], r["target_dev_wer"], -r["weight"]))


def choose_job_lm(texts: list[str], base_path: str | Path, candidate: Path, dev_manifest: str, source_dev: str,
                  source_limit: float, characters: tuple[str, ...], out: Path,
                  log: Callable[[str], None] = print) -> dict:
    """`build_job_lm`, then (a base with an LM) the weight chosen by decoding `candidate` (see the module's text).
    Returns lm.json's "domain" section with "decoding" (one row per weight: target and source dev WER),
    "perplexity_weight" and "weight" (the chosen one: 0 keeps the base's LM, the domain text unused)."""
    from speechadapt.asr.evaluation import evaluate
    from speechadapt.asr.inference import load_model

    section, mix = _build(texts, base_path, dev_manifest, characters, out)
    if section["mode"] != "mixed" or "decoding" in section:
        return section
    ppl_weight = section["weight"]
    weights = [0.0] + sorted({w for w in DECODE_WEIGHTS if w < ppl_weight} | {ppl_weight})
    mix = mix or _Mix(_text_sentences(texts, characters)[0], Path(base_path) / "lm", characters)
    work = out.with_name(out.name + ".weights")
    shutil.rmtree(work, ignore_errors=True)
    folders = {w: out if w == ppl_weight else work / f"lm-{w:g}" for w in weights}
    rows = []
    for w, lm_dir in folders.items():
        if lm_dir != out:
            mix.write(w, lm_dir, {})
        model = load_model(with_lm(candidate, lm_dir, work / f"model-{w:g}"))
        row = {"weight": w, "target_dev_wer": evaluate(model, dev_manifest).wer,
               "source_dev_wer": evaluate(model, source_dev).wer}
        rows.append(row)
        log(f"domain LM weight {w:g}: adapted model target dev WER {row['target_dev_wer']:.1%}, source dev WER "
            f"{row['source_dev_wer']:.1%}" + (" (the perplexity weight)" if w == ppl_weight else "")
            + (" (the base's LM alone)" if w == 0 else ""))
    best = pick_weight(rows, source_limit)
    ppl = section["dev_perplexity"]
    chosen_ppl = {0.0: ppl["base_lm"], ppl_weight: ppl["mixed"]}.get(best["weight"]) or section["weights"][str(best["weight"])]
    section = {**section, "weight": best["weight"], "perplexity_weight": ppl_weight, "decoding": rows,
               "source_limit": source_limit, "dev_perplexity": {**ppl, "chosen": chosen_ppl}}
    chosen = folders[best["weight"]]
    _set_domain(chosen, section)  # the folder decoded is the one kept: no second mix
    if chosen != out:
        shutil.rmtree(out)
        chosen.rename(out)
    shutil.rmtree(work, ignore_errors=True)
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
