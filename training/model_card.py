"""Finish a pretrained package's model card: record the corpus recipe and the benchmark in model.json and
write a short MODEL_CARD.md beside it.

    python -m speechadapt.training.model_card models/base-en/1 --corpus .cache/base-en/corpus/train \
        --dev-corpus .cache/base-en/corpus/dev --bench bench/results/base_model.json --reproduce "make base-en"

model.json gains lineage.corpus (the corpus summary.json: voices, speakers, hours, synthesis config),
lineage.vocab_size/voices/speakers, lineage.text_sources (the sources, licences and counts of a `data text` file
the corpus was synthesised from: its sources.json, found beside the corpus's sentences file or given with
--text-sources), lineage.engines (each speech engine's version, licence, voices and hours), lineage.lm (the
attached language model's lm.json summary, when the package has one), lineage.command (how to reproduce it),
metrics.per_accent (the benchmark's rows, as served) and metrics.per_accent_no_lm (--bench-no-lm: the same
benchmark before the LM was attached). Only the card changes: the weights and their sha256 stay as they are,
and the card is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from speechadapt.asr.package import CARD, read_card


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: --corpus/--dev-corpus name a `speechadapt data synth` output folder")
    s = json.loads(path.read_text())
    s.pop("per_speaker", None)
    return s


def text_sources(summary: dict, explicit: Path | None) -> dict | None:
    """The sources.json of the text the corpus was synthesised from: `explicit`, else the one beside the
    corpus's sentences file (`data text` writes train.txt and train.sources.json); None for generated text."""
    from speechadapt.training.corpus_text import sources_json_for

    if explicit is not None:
        if not explicit.is_file():
            raise SystemExit(f"error: {explicit} not found: --text-sources names the sources.json that "
                             "`speechadapt data text` wrote beside its text file")
        return json.loads(explicit.read_text())
    sentences = summary.get("config", {}).get("sentences_file")
    if not sentences:
        return None
    path = sources_json_for(sentences)
    return json.loads(path.read_text()) if path.is_file() else None


def _text_lines(lin: dict, corpus: dict, cfg: dict) -> list[str]:
    ts = lin.get("text_sources")
    if not ts:
        if cfg.get("sentences_file"):
            return [f"- Text: the sentences of {cfg['sentences_file']} (no sources.json beside it)."]
        return [f"- Text: {cfg.get('words')} words per sentence from the {cfg.get('vocab_size')} most common "
                f"English words ({corpus.get('word_source', '')})."]
    n, utts = ts.get("sentences") or 0, corpus.get("utterances") or 0
    spoken = (f"the {utts} utterances speak the first {utts} of its {n} sentences" if utts < n else
              f"the {utts} utterances speak its {n} sentences" + (" (cycled)" if utts > n else ""))
    lines = [f"- Text: {cfg.get('sentences_file')}, {n} sentences of {ts.get('words', ['?', '?'])[0]}-"
             f"{ts.get('words', ['?', '?'])[-1]} words from `speechadapt data text` ({ts.get('split')} split, seed "
             f"{ts.get('seed')}; test sentences are never trained on: {ts.get('split_rule')}); {spoken}. "
             "The file's sources:"]
    for r in ts.get("sources", []):
        version = f" {r['version']}" if r.get("version") else ""
        lines.append(f"  - {r['source']}: {r.get('sentences_used')} sentences, {r.get('description', '')}; "
                     f"package {r.get('package')}{version}; licence: {r.get('licence')}")
    return lines


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def engines(summary: dict) -> list[dict]:
    """Per speech engine of a corpus summary: version, licence, voices, speakers and hours."""
    from speechadapt.training import voices as V

    versions = summary.get("engines") or ({"espeak": summary["espeak_ng"]} if summary.get("espeak_ng") else {})
    hours = summary.get("per_engine_hours") or {}
    out = []
    for name, version in versions.items():
        mine = [v for v in summary.get("voices", []) if (v.split(":", 1)[0] if ":" in v else "espeak") == name]
        speakers = [sp for sp in summary.get("speakers", []) if _speaker_engine(sp) == name]
        cls = V.ENGINES.get(name)
        out.append({"engine": name, "version": version, "licence": cls.licence if cls else "",
                    "voices": mine, "speakers": len(speakers), "hours": hours.get(name)})
    return out


def _speaker_engine(speaker: str) -> str:
    """synth's speaker ids: `flite-slt` for the other engines, `en-us+f3` (no engine prefix) for espeak-ng."""
    from speechadapt.training import voices as V

    return next((e for e in V.ENGINES if e != "espeak" and speaker.startswith(e + "-")), "espeak")


def lm_summary(package: Path) -> dict | None:
    """The attached LM's lm.json, without its per-file hashes (model.json lists those)."""
    from speechadapt.lm import INFO, PACKAGE_DIR

    path = package / PACKAGE_DIR / INFO
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    keep = ("order", "counts", "vocabulary", "text_words", "sources", "broad_words", "min_count", "prune",
            "smoothing", "decoding")
    out = {k: info.get(k) for k in keep}
    if isinstance(info.get("tuned"), dict):  # `lm tune`: where the decoding weights came from (not every grid row)
        t = info["tuned"]
        out["tuned"] = {k: t.get(k) for k in ("dev_manifest", "utterances", "dev_wer", "before")}
        out["tuned"]["grid_points"] = len(t.get("grid") or [])
    out["bytes"] = sum(p.stat().st_size for p in (package / PACKAGE_DIR).iterdir() if p.is_file())
    return out


def _engine_lines(lin: dict) -> list[str]:
    rows = lin.get("engines") or []
    if not rows:
        return []
    lines = ["- Voices (engine, version, voices, share of the training audio, licence):"]
    for e in rows:
        h = "" if e.get("hours") is None else f", {e['hours']:.2f} h"
        lines.append(f"  - {e['engine']} {e.get('version', '')}: {', '.join(e.get('voices') or [])} "
                     f"({e.get('speakers')} speaker{'' if e.get('speakers') == 1 else 's'}{h}); licence: {e.get('licence')}")
    return lines


def _time_line(lin: dict) -> str:
    """How long training took: its wall time, or for a resumed run the training time of all its runs."""
    wall, resumed = lin.get("wall_seconds", 0) / 60, lin.get("resumed_from_steps") or []
    if not resumed:
        return f"{wall:.0f} min wall"
    return (f"{lin.get('train_seconds', 0) / 60:.0f} min of training over {len(resumed) + 1} runs (resumed at steps "
            f"{', '.join(str(s) for s in resumed)}; the last run {wall:.0f} min wall)")


def _lm_lines(lm: dict | None) -> list[str]:
    if not lm:
        return []
    counts = ", ".join(f"{c:,} {n}-grams" for n, c in (lm.get("counts") or {}).items())
    texts = ", ".join(f"{s.get('path')} ({s.get('sentences')} sentences)" for s in lm.get("sources") or [])
    broad = lm.get("broad_words")
    return ["## Language model (lm/)",
            f"- {lm.get('order')}-gram word LM, {lm.get('smoothing')}, pruned {lm.get('prune') or 'not'}: {counts}; "
            f"vocabulary {lm.get('vocabulary'):,} words ({lm.get('text_words'):,} from the text"
            + (f", the rest from {broad.get('path')}" if broad else "") + f"); {lm.get('bytes', 0) / 1e6:.1f} MB.",
            f"- Text: {texts} (the training text; the same licences as above).",
            f"- Decoding with it: {lm.get('decoding')}. Interim results stay greedy; finals use the LM.",
            *_tuned_lines(lm.get("tuned")), ""]


def _tuned_lines(t: dict | None) -> list[str]:
    if not t:
        return []
    b = t.get("before") or {}
    return [f"- Weights tuned with `speechadapt lm tune` on {t.get('utterances')} dev utterances ({t.get('dev_manifest')}, "
            f"{t.get('grid_points')} settings): dev WER {b.get('dev_wer', float('nan')):.1%} at lm_weight "
            f"{b.get('lm_weight')}, word score {b.get('lm_word_score')} -> {t.get('dev_wer', float('nan')):.1%}."]


def _rows_table(rows: list[dict]) -> list[str]:
    lines = ["| accent / set | seen? | utts | WER | CER | greedy WER | RTF |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("kind") == "note":
            lines.append(f"| {r['set']} | {r['seen']} | - | - | - | - | - |")
        else:
            rtf = "-" if r.get("rtf") is None else f"{r['rtf']:.3f}"
            lines.append(f"| {r['set']} | {r['seen']} | {r.get('utterances')} | {_pct(r.get('wer'))} | "
                         f"{_pct(r.get('cer'))} | {_pct(r.get('greedy_wer'))} | {rtf} |")
    return lines


def per_accent(bench: dict) -> list[dict]:
    keep = ("set", "kind", "seen", "utterances", "audio_minutes", "wer", "cer", "greedy_wer", "rtf", "note")
    return [{k: r[k] for k in keep if k in r} for r in bench.get("rows", [])]


def markdown(card: dict) -> str:
    lin, met = card["lineage"], card["metrics"]
    corpus = lin.get("corpus", {})
    cfg = corpus.get("config", {})
    hp = card["hparams"]
    lines = [
        f"# {card['name']}@{card['version']}",
        "",
        card.get("description", ""),
        "",
        "## Model",
        f"- Streaming conformer-CTC over characters: d_model {hp.get('d_model')}, {hp.get('num_layers')} layers, "
        f"{card['num_parameters']:,} parameters, {hp.get('chunk_frames', 0) * hp.get('stack', 4) * 10} ms chunks with "
        f"{hp.get('left_chunks')} chunks of left context; 80-dim fbank at {card['sample_rate']} Hz.",
        "",
        f"## Data (synthetic: {', '.join(e['engine'] for e in lin.get('engines') or []) or 'espeak'}, nothing downloaded)",
        f"- Training: {corpus.get('utterances')} utterances, {corpus.get('hours', 0):.2f} h, voices "
        f"{', '.join(corpus.get('voices', []))}, {len(corpus.get('speakers', []))} speakers: "
        f"{', '.join(corpus.get('speakers', []))}.",
        *_engine_lines(lin),
        *_text_lines(lin, corpus, cfg),
        f"- Speech: speed {cfg.get('speed')} wpm, pitch {cfg.get('pitch')}; noise at "
        f"{cfg.get('noise_snr')} dB SNR on {cfg.get('noise_prob')} of utterances; speed perturbation "
        f"{cfg.get('speed_perturb')}" + (f"; engine weights {cfg['engine_weights']}" if cfg.get("engine_weights")
                                         else "") + ".",
        f"- Dev (model selection): {lin.get('dev_data', '')}.",
        "",
        "## Training",
        f"- {lin.get('steps')} steps (best at {lin.get('best_step')}), {lin.get('workers')} Ray Train workers "
        f"({lin.get('backend')}, {lin.get('cpus_per_worker')} CPU each), " + _time_line(lin) + ", "
        f"{lin.get('software', '')}. Best dev WER {_pct(met.get('dev_wer'))}, CER {_pct(met.get('dev_cer'))}.",
        f"- Reproduce: `{lin.get('command', '')}`",
        "",
        *_lm_lines(lin.get("lm")),
        "## Accuracy per accent (bench/base_model.py)",
        "Unseen sentences spoken by espeak-ng speaker variants not in training; accents outside the training "
        "voices are zero-shot. Decoded as served" + (" (with the LM)" if lin.get("lm") else "") +
        f". Command: `{met.get('benchmark_command', '')}`",
        "",
        *_rows_table(met.get("per_accent", [])),
    ]
    notes = [f"- {r['set']}: {r['note']}" for r in met.get("per_accent", []) if r.get("note")]
    lines += ([""] + notes if notes else [])
    if met.get("per_accent_no_lm"):
        lines += ["", "Without the LM (the package's own closed lexicon), same test sets: "
                  f"`{met.get('benchmark_command_no_lm', '')}`", "", *_rows_table(met["per_accent_no_lm"])]
    lines += [
        "",
        "## Limits",
        "- Trained on synthetic speech only: expect much higher error rates on real human speech (see the real-speech "
        "rows) and on accents outside the training voices. That gap is what adaptation jobs close.",
        (f"- Vocabulary: finals are a beam search over the LM's {lin['lm'].get('vocabulary'):,} words; other words "
         "come out as the nearest listed word unless a request boosts them with `speech_contexts`. "
         if lin.get("lm") else
         f"- Closed vocabulary: decoding is a beam search over the {cfg.get('vocab_size') or 'training'} words of the "
         "training text (`lexicon.txt`); other words come out as the nearest lexicon word unless a request boosts "
         "them with `speech_contexts` (which adds them to the search). ") + "`greedy WER` shows the acoustic model alone.",
        "",
    ]
    return "\n".join(lines)


def ensure_lexicon(package: Path, corpus: Path, card: dict) -> None:
    """Packages exported before lexicons existed get theirs from the training corpus's transcripts."""
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.package import LEXICON, lexicon_from_texts, sha256_file

    if LEXICON in card.get("files", {}):
        return
    words = lexicon_from_texts(u.text for u in read_manifest(corpus / "manifest.jsonl"))
    path = package / LEXICON
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    card["files"][LEXICON] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def finish(package: Path, corpus: Path, dev_corpus: Path | None, bench: Path | None, reproduce: str,
           sources: Path | None = None, bench_no_lm: Path | None = None) -> dict:
    card = json.loads((package / CARD).read_text())
    ensure_lexicon(package, corpus, card)
    summary = _summary(corpus)
    texts = text_sources(summary, sources)
    lin = card.setdefault("lineage", {})
    lin["corpus"] = summary
    lin["vocab_size"] = summary.get("config", {}).get("vocab_size")
    lin["voices"] = summary.get("voices")
    lin["engines"] = engines(summary)
    lm = lm_summary(package)
    if lm is not None:
        lin["lm"] = lm
    else:
        lin.pop("lm", None)
    lin["speakers"] = summary.get("speakers")
    if texts is not None:
        lin["text_sources"] = texts
    else:
        lin.pop("text_sources", None)
    if dev_corpus is not None:
        lin["dev_corpus"] = _summary(dev_corpus)
    lin["command"] = reproduce
    if bench is not None:
        b = json.loads(bench.read_text())
        card.setdefault("metrics", {})["per_accent"] = per_accent(b)
        card["metrics"]["benchmark_command"] = b.get("command", "")
    if bench_no_lm is not None:
        b = json.loads(bench_no_lm.read_text())
        card.setdefault("metrics", {})["per_accent_no_lm"] = per_accent(b)
        card["metrics"]["benchmark_command_no_lm"] = b.get("command", "")
    tmp = package / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, package / CARD)
    (package / "MODEL_CARD.md").write_text(markdown(card))
    read_card(package)  # still a valid card
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", type=Path, help="model package folder (model.json + weights)")
    p.add_argument("--corpus", type=Path, required=True, help="training corpus folder (with summary.json)")
    p.add_argument("--dev-corpus", type=Path, help="dev corpus folder (with summary.json)")
    p.add_argument("--bench", type=Path, help="bench/base_model.py JSON results (of the package as served)")
    p.add_argument("--bench-no-lm", type=Path, metavar="JSON",
                   help="bench/base_model.py JSON results of the package before its LM was attached")
    p.add_argument("--reproduce", default="make base-en", help="the command that rebuilds this model")
    p.add_argument("--text-sources", type=Path, metavar="JSON",
                   help="sources.json of the training text (default: the one beside the corpus's sentences file)")
    a = p.parse_args(argv)
    for path in (a.bench, a.bench_no_lm):
        if path is not None and not path.is_file():
            p.error(f"{path} not found: --bench/--bench-no-lm name bench/base_model.py --out files")
    finish(a.package, a.corpus, a.dev_corpus, a.bench, a.reproduce, a.text_sources, a.bench_no_lm)
    print(f"updated {a.package / CARD} and wrote {a.package / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
