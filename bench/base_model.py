#!/usr/bin/env python
"""Per-accent WER / CER / RTF of a base model, on synthetic accents and on real human speech.

    python bench/base_model.py --model base-en [--model-store models] [--out bench/results/base_model.json]
        [--per-accent 60] [--seed 123] [--workdir .cache/bench] [--accents all|en-us,en-gb,...]
        [--train-summary PATH] [--quick]

Synthetic rows: for every English espeak-ng voice (`speechadapt.training.synth.list_voices()`), the same
`--per-accent` unseen sentences, spoken by espeak-ng speaker variants the model was NOT trained on.
What the model saw comes from its training corpus: `--train-summary` (a corpus `summary.json`, or a
`manifest.jsonl` whose speakers are `voice+variant`), else the model card's lineage (`config.train_manifest`
or `training_data` -> the corpus folder's `summary.json`). A voice in the training corpus is a `seen accent`,
any other an `unseen accent (zero-shot)`. Test text comes from --test-text FILE (for a model trained on
`speechadapt data text` sentences: that command's `--split test`, which no train file can hold), else it is
generated with a seed different from the corpus's,
with the corpus's closed vocabulary size when it had one (`vocab_size`), and any sentence that is also a
training transcript is skipped. Speed and pitch ranges follow the training corpus; no augmentation.
Synthesised sets are cached in --workdir under a hash of their config: a rerun only decodes.

Real rows (skipped with a note row when ../shared/data or a manifest is missing): fsdd per accent group of
its speakers.json (takes 0-4, the dataset's test split; --fsdd-takes all for every take),
speechbrain_asr_samples (the `text_uncertain` utterance left out), ljspeech_coqui_subset,
misc_single_utterances. References and hypotheses are normalised (speechadapt.asr.text.normalize_text).

WER/CER use the model's own decoder (beam search over its lexicon when the package has one); `greedy WER` is
the same acoustic output decoded greedily, to show what the decoder adds.

Prints a markdown table and writes JSON {"model", "created", "command", "rows", "machine", ...} to --out.
--quick: 10 utterances per accent and no real speech (a smoke test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CACHE_FORMAT = 1  # bump when the synthetic test set recipe changes
DEFAULT_VARIANTS = 4  # unseen speaker variants per accent
SEEN, UNSEEN, UNKNOWN = "seen accent", "unseen accent (zero-shot)", "unknown (no training corpus info)"


# -- what the model was trained on


@dataclass
class TrainingInfo:
    source: str = ""  # the summary/manifest it came from; "" = unknown
    voices: list[str] | None = None
    variants: list[str] | None = None  # names, "none" = the plain voice
    vocab_size: int | None = None  # closed generator vocabulary
    sentences_file: str | None = None
    seed: int | None = None
    speed: tuple[int, int] | None = None
    pitch: tuple[int, int] | None = None
    words: tuple[int, int] | None = None
    template_ratio: float | None = None
    texts: set[str] = field(default_factory=set)  # training transcripts (normalised)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"source": self.source or None, "voices": self.voices, "variants": self.variants,
                "vocab_size": self.vocab_size, "sentences_file": self.sentences_file, "seed": self.seed,
                "speed": self.speed, "pitch": self.pitch, "words": self.words, "transcripts": len(self.texts),
                "notes": self.notes}


def _resolve(path: str, model_dir: Path | None) -> Path | None:
    """A path as recorded at training time: absolute, or relative to cwd, the repo, or the model package."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    bases = [Path.cwd(), REPO]
    if model_dir is not None:
        bases += [model_dir, *model_dir.resolve().parents]
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    return None


def _candidates(lineage: dict) -> list[str]:
    """Paths in a model card's lineage that may lead to the training corpus (summary first)."""
    out = []
    for key in ("train_summary", "corpus_summary", "training_summary"):
        if isinstance(lineage.get(key), str):
            out.append(lineage[key])
    cfg = lineage.get("config") if isinstance(lineage.get("config"), dict) else {}
    if isinstance(cfg.get("train_manifest"), str) and cfg["train_manifest"]:
        out.append(cfg["train_manifest"])
    data = lineage.get("training_data")
    if isinstance(data, str) and data.strip():
        out.append(re.sub(r"\s+\(.*\)\s*$", "", data.strip()))
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            if isinstance(d, dict):
                rows.append(d)
    return rows


def _split_speaker(speaker: str) -> tuple[str, str]:
    voice, _, variant = speaker.partition("+")
    return voice, variant or "none"


def _from_summary(path: Path, info: TrainingInfo) -> None:
    s = json.loads(path.read_text())
    _from_summary_data(s, str(path), info)
    manifest = path.parent / "manifest.jsonl"
    if manifest.is_file():
        _texts(manifest, info)


def _from_summary_data(s: dict, source: str, info: TrainingInfo) -> None:
    """A corpus summary (summary.json, or the copy a shipped model card keeps in lineage["corpus"])."""
    from speechadapt.training.synth import resolve_variants, list_variants

    if not isinstance(s, dict) or not isinstance(s.get("config"), dict):
        raise ValueError(f"{source} is not a corpus summary (no \"config\")")
    cfg = s["config"]
    info.source = source
    info.voices = sorted(s.get("voices") or cfg.get("voices") or [])
    if s.get("speakers"):
        info.variants = sorted({_split_speaker(sp)[1] for sp in s["speakers"]})
    elif cfg.get("variants") is not None:
        info.variants = resolve_variants(cfg["variants"], list_variants())
    info.vocab_size = cfg.get("vocab_size")
    info.sentences_file = cfg.get("sentences_file")
    info.seed = s.get("seed", cfg.get("seed"))
    for name in ("speed", "pitch", "words"):
        if cfg.get(name):
            setattr(info, name, tuple(int(v) for v in cfg[name]))
    info.template_ratio = cfg.get("template_ratio")


def _texts(manifest: Path, info: TrainingInfo) -> list[dict]:
    from speechadapt.asr.text import normalize_text

    rows = _read_jsonl(manifest)
    info.texts |= {normalize_text(str(r.get("text", ""))) for r in rows}
    return rows


def _from_manifest(path: Path, info: TrainingInfo) -> None:
    """A training manifest without summary.json: voices and variants from its `voice+variant` speakers."""
    from speechadapt.training.synth import list_voices

    rows = _texts(path, info)
    speakers = {str(r.get("speaker", "")) for r in rows}
    pairs = {_split_speaker(sp) for sp in speakers if sp}
    known = set(list_voices())
    if not pairs or not all(v in known for v, _ in pairs):
        info.notes.append(f"{path}: speakers are not espeak-ng voice[+variant] ids; seen voices unknown")
        return
    info.source = str(path)
    info.voices = sorted({v for v, _ in pairs})
    info.variants = sorted({w for _, w in pairs})
    info.notes.append(f"voices/variants from the speakers of {path} (no summary.json beside it)")


def training_info(card, model_dir: Path | None, explicit: str | None) -> TrainingInfo:
    info = TrainingInfo()
    lineage = card.lineage if isinstance(card.lineage, dict) else {}
    if isinstance(lineage.get("vocab_size"), int):
        info.vocab_size = lineage["vocab_size"]
    if explicit:
        tried = [explicit]
    else:
        tried = _candidates(lineage)
    for cand in tried:
        path = Path(cand) if explicit else _resolve(cand, model_dir)
        if path is None or not path.exists():
            if explicit:
                raise ValueError(f"--train-summary {explicit}: not found")
            info.notes.append(f"lineage path {cand!r} not found (relative to cwd, repo or model folder)")
            continue
        if path.is_dir():
            path = path / "summary.json" if (path / "summary.json").is_file() else path / "manifest.jsonl"
        if path.suffix == ".jsonl" and (path.parent / "summary.json").is_file():
            path = path.parent / "summary.json"
        try:
            if path.suffix == ".jsonl":
                _from_manifest(path, info)
            else:
                _from_summary(path, info)
        except (OSError, ValueError) as e:
            if explicit:
                raise ValueError(f"--train-summary {explicit}: {e}") from e
            info.notes.append(f"{path}: {e}")
            continue
        if info.source:
            break
    if not info.source and not explicit and isinstance(lineage.get("corpus"), dict):
        # a shipped model: its corpus is not on this machine, but the card keeps the corpus summary
        _from_summary_data(lineage["corpus"], "model card lineage.corpus", info)
        info.notes.append("training corpus from the model card (lineage.corpus); its transcripts are not "
                          "available, so test sentences are not checked against them")
    elif not tried:
        info.notes.append("the model card's lineage names no training corpus; pass --train-summary")
    return info


# -- the synthetic test sets


def _variant_pool() -> list[str]:
    """Natural-sounding espeak-ng variants, in synth's preferred order ("none" first)."""
    from speechadapt.training.synth import resolve_variants, list_variants

    available = list_variants()
    for n in range(len(available) + 1, 0, -1):  # the largest N synth accepts = the whole natural pool
        try:
            return resolve_variants(n, available)
        except ValueError:
            continue
    return ["none"]


def test_variants(info: TrainingInfo, wanted: list[str] | None, count: int) -> tuple[list[str], str]:
    if wanted:
        from speechadapt.training.synth import resolve_variants, list_variants

        chosen = resolve_variants(wanted, list_variants())
        clash = sorted(set(chosen) & set(info.variants or []))
        note = f"given variants {clash} were used in training" if clash else "given with --variants"
        return chosen, note
    seen = set(info.variants or [])
    if info.variants is None:  # unknown: avoid synth's default speakers (none + the first 3 variants)
        from speechadapt.training.synth import SynthConfig

        seen = set(_variant_pool()[: SynthConfig(out_dir="").variants])
    unseen = [v for v in _variant_pool() if v not in seen]
    if not unseen:
        raise ValueError("every natural espeak-ng variant was used in training: pass --variants")
    basis = "not in the training corpus" if info.variants is not None else "not synth's defaults (training unknown)"
    return unseen[:count], basis


def _word_list(spec: str) -> tuple[list[str], str]:
    """--sentence-words: a comma list, a text file of words, or a manifest.jsonl (the words of its transcripts)."""
    from speechadapt.asr.text import normalize_text

    p = Path(spec)
    if p.is_file():
        if p.suffix == ".jsonl":
            text = " ".join(str(r.get("text", "")) for r in _read_jsonl(p))
        else:
            text = p.read_text(encoding="utf-8", errors="replace")
        source = str(p)
    elif "," in spec or re.fullmatch(r"[A-Za-z' ]+", spec):
        text, source = spec.replace(",", " "), "--sentence-words list"
    else:
        raise ValueError(f"--sentence-words {spec!r}: not a file nor a comma-separated word list")
    words = sorted(set(normalize_text(text).split()))
    if not words:
        raise ValueError(f"--sentence-words {spec!r} holds no words")
    return words, source


@dataclass
class TestText:
    sentences: list[str]
    seed: int
    source: str  # word source
    vocab_size: int | None  # closed vocabulary size, None = broad
    words: tuple[int, int]
    skipped_training: int  # generated sentences dropped because they were training transcripts
    notes: list[str]

    def as_dict(self) -> dict:
        return {"seed": self.seed, "source": self.source, "vocab_size": self.vocab_size, "words": self.words,
                "sentences": len(self.sentences), "skipped_training_sentences": self.skipped_training,
                "notes": self.notes}


def _file_text(path: Path, info: TrainingInfo, count: int, seed: int, words, notes: list[str]) -> TestText:
    """The first `count` distinct lines of a text file that are not training transcripts."""
    from speechadapt.training import text as textgen
    from speechadapt.training.corpus_text import read_sources

    if not path.is_file():
        raise ValueError(f"--test-text {path}: file not found (make one with `speechadapt data text --split test`)")
    meta = read_sources(path)
    if meta is not None and meta.get("split") != "test":
        notes.append(f"{path} is the {meta.get('split')!r} split of `data text`, not 'test'")
    sentences, skipped = [], 0
    for s in dict.fromkeys(textgen.read_sentences(path)):
        if s in info.texts:
            skipped += 1
        elif len(sentences) < count:
            sentences.append(s)
    if len(sentences) < count:
        raise ValueError(f"--test-text {path} has {len(sentences)} sentences that are not training transcripts, "
                         f"fewer than the {count} asked for")
    return TestText(sentences, seed, str(path), None, words, skipped, notes)


def make_text(args, info: TrainingInfo, count: int) -> TestText:
    from speechadapt.training import text as textgen

    notes = []
    seed = args.seed
    while info.seed is not None and seed == info.seed:
        seed += 1
    if seed != args.seed:
        notes.append(f"--seed {args.seed} is the training corpus's seed: used {seed}")
    words = tuple(args.words) if args.words else (info.words or (3, 10))
    vocab_size = None
    if getattr(args, "test_text", None):
        return _file_text(Path(args.test_text), info, count, seed, words, notes)
    if args.sentence_words:
        vocab, source = _word_list(args.sentence_words)
        vocab_size = len(vocab)

        def gen(rng):
            n = int(rng.integers(words[0], words[1] + 1))
            return " ".join(vocab[int(i)] for i in rng.integers(len(vocab), size=n))
    else:
        vocab_size = args.vocab_size or info.vocab_size
        if info.sentences_file and not args.vocab_size:
            notes.append(f"training text came from {info.sentences_file}; test text is the generator's "
                         "(use --sentence-words to test in that vocabulary)")
        vocab, source = textgen.load_vocabulary(vocab_size)
        if not vocab:
            raise ValueError("no English word list: apt-get install wamerican, or pip install wordfreq")
        if vocab_size and len(vocab) < vocab_size:
            raise ValueError(f"vocab_size {vocab_size} exceeds the {len(vocab)} words of {source}")
        ratio = 0.0 if vocab_size else (info.template_ratio if info.template_ratio is not None else 0.3)

        def gen(rng):
            return textgen.generate_sentence(rng, vocab, words, ratio)

    sentences, seen, skipped = [], set(), 0
    for i in range(200 * count):
        s = gen(np.random.default_rng([seed, i, 7]))
        if not s or s in seen:
            continue
        if s in info.texts:
            skipped += 1
            continue
        seen.add(s)
        sentences.append(s)
        if len(sentences) == count:
            break
    if len(sentences) < count:
        raise ValueError(f"could only generate {len(sentences)} distinct unseen sentences of {count}: "
                         "widen the vocabulary or --words")
    return TestText(sentences, seed, source, vocab_size, words, skipped, notes)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def synth_set(workdir: Path, voice: str, variants: list[str], text: TestText, info: TrainingInfo,
              jobs: int, espeak_version: str) -> tuple[Path, bool]:
    """The test set of one voice (cached); returns (manifest, was_cached)."""
    from speechadapt.training.synth import SynthConfig, synthesize

    body = "".join(s + "\n" for s in text.sentences)
    text_file = workdir / "text" / f"{_key(body)}.txt"
    if not text_file.is_file():
        text_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = text_file.with_suffix(".tmp")
        tmp.write_text(body)
        os.replace(tmp, text_file)
    speed, pitch = info.speed or SynthConfig(out_dir="").speed, info.pitch or SynthConfig(out_dir="").pitch
    config = {"format": CACHE_FORMAT, "voice": voice, "variants": variants, "text": _key(body),
              "count": len(text.sentences), "seed": text.seed, "speed": list(speed), "pitch": list(pitch),
              "espeak_ng": espeak_version}
    out = workdir / "synth" / f"{voice}-{_key(config)}"
    summary = out / "summary.json"
    if summary.is_file() and (out / "manifest.jsonl").is_file():
        try:
            if json.loads(summary.read_text()).get("utterances") == len(text.sentences):
                return out / "manifest.jsonl", True
        except (OSError, ValueError):
            pass
    synthesize(SynthConfig(out_dir=out, voices=[voice], variants=list(variants), sentences_file=text_file,
                           count=len(text.sentences), seed=text.seed, speed=tuple(speed), pitch=tuple(pitch),
                           jobs=jobs, quiet=True))
    (out / "bench-config.json").write_text(json.dumps(config, indent=1) + "\n")
    return out / "manifest.jsonl", False


# -- real speech


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "x"


def _write_manifest(path: Path, rows: list[dict], base: Path) -> Path:
    """A manifest with absolute audio paths (the originals stay where they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**r, "audio": str((base / r["audio"]).resolve())}) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def real_sets(workdir: Path, fsdd_takes: str) -> list[dict]:
    """[{"set", "manifest"|None, "note", "details"}] for the real-speech rows."""
    if not SHARED_DATA.is_dir():
        return [{"set": "real speech", "manifest": None, "note": f"skipped: {SHARED_DATA} is absent"}]
    out: list[dict] = []
    real = workdir / "real"
    # fsdd, per accent group
    try:
        root = SHARED_DATA / "fsdd"
        rows = _read_jsonl(root / "manifest.jsonl")
        speakers = json.loads((root / "speakers.json").read_text())
        groups: dict[str, list[dict]] = {}
        for r in rows:
            m = re.match(r"^(\d+)_([^_]+)_(\d+)\.wav$", Path(r["audio"]).name)
            if fsdd_takes == "test" and (m is None or int(m.group(3)) > 4):
                continue
            spk = str(r.get("speaker") or (m.group(2) if m else ""))
            meta = speakers.get(spk) if isinstance(speakers.get(spk), dict) else {}
            groups.setdefault(meta.get("accent", "unknown accent"), []).append(r)
        if not groups:
            raise ValueError("no utterances")
        split = "takes 0-4 (test split)" if fsdd_takes == "test" else "all takes"
        for accent, items in sorted(groups.items()):
            spk = sorted({str(r.get("speaker", "")) for r in items})
            out.append({"set": f"fsdd {accent}", "details": {"speakers": spk, "split": split},
                        "manifest": _write_manifest(real / f"fsdd-{_slug(accent)}-{fsdd_takes}.jsonl", items, root),
                        "note": f"digits, {split}, speakers {', '.join(spk)}"})
    except (OSError, ValueError, KeyError, TypeError) as e:
        out.append({"set": "fsdd", "manifest": None, "note": f"skipped: {type(e).__name__}: {e}"})
    # the others, whole
    for name in ("speechbrain_asr_samples", "ljspeech_coqui_subset", "misc_single_utterances"):
        try:
            root = SHARED_DATA / name
            rows = _read_jsonl(root / "manifest.jsonl")
            keep = [r for r in rows if not r.get("text_uncertain")]
            note = f"{len(rows) - len(keep)} text_uncertain utterance(s) left out" if len(keep) < len(rows) else ""
            if not keep:
                raise ValueError("no utterances")
            out.append({"set": name, "manifest": _write_manifest(real / f"{name}.jsonl", keep, root), "note": note,
                        "details": {"speakers": sorted({str(r.get("speaker", "")) for r in keep})}})
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append({"set": name, "manifest": None, "note": f"skipped: {type(e).__name__}: {e}"})
    return out


# -- running and reporting


def _espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "absent"
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else "unknown"


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device, "espeak_ng": _espeak_version()}


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(rows: list[dict]) -> str:
    lines = ["| accent / set | seen? | utts | audio min | WER | CER | greedy WER | RTF |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["kind"] == "note":
            lines.append(f"| {r['set']} | {r['seen']} | - | - | - | - | - | - |")
            continue
        rtf = "-" if r.get("rtf") is None else f"{r['rtf']:.3f}"
        lines.append(f"| {r['set']} | {r['seen']} | {r['utterances']} | {r['audio_minutes']:.2f} | {_pct(r['wer'])} | "
                     f"{_pct(r['cer'])} | {_pct(r.get('greedy_wer'))} | {rtf} |")
    notes = [f"- {r['set']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def _eval_row(model, name: str, kind: str, seen: str, manifest: Path, note: str = "", **details) -> dict:
    from speechadapt.asr.evaluation import evaluate

    t0 = time.monotonic()
    try:
        r = evaluate(model, manifest, greedy=True)
    except (OSError, ValueError, RuntimeError) as e:
        return {"set": name, "kind": "note", "seen": seen, "note": f"evaluation failed: {type(e).__name__}: {e}",
                "manifest": str(manifest), **details}
    return {"set": name, "kind": kind, "seen": seen, "utterances": r.utterances,
            "audio_minutes": round(r.audio_seconds / 60, 3), "wer": r.wer, "cer": r.cer, "greedy_wer": r.greedy_wer, "rtf": r.rtf,
            "eval_seconds": round(time.monotonic() - t0, 1), "manifest": str(manifest), "note": note, **details}


def _macro(rows: list[dict], seen: str, label: str) -> dict | None:
    rs = [r for r in rows if r["kind"] == "synthetic" and r["seen"] == seen]
    if len(rs) < 2:
        return None
    return {"set": label, "kind": "summary", "seen": seen, "utterances": sum(r["utterances"] for r in rs),
            "audio_minutes": round(sum(r["audio_minutes"] for r in rs), 3),
            "wer": float(np.mean([r["wer"] for r in rs])), "cer": float(np.mean([r["cer"] for r in rs])),
            "greedy_wer": float(np.mean([r["greedy_wer"] for r in rs])),
            "rtf": float(np.mean([r["rtf"] for r in rs])), "note": f"unweighted mean of {len(rs)} accents"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="name[@version] in --model-store (or built in), or a package folder")
    p.add_argument("--model-store", default=str(REPO / "models"), metavar="DIR",
                   help="model store (default: <repo>/models)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "base_model.json"), metavar="PATH",
                   help="JSON results (default: bench/results/base_model.json)")
    p.add_argument("--per-accent", type=int, default=None, metavar="N",
                   help="synthetic utterances per accent (default: 60; 10 with --quick)")
    p.add_argument("--seed", type=int, default=123, help="test text and speaker seed (default: 123; never the "
                   "training corpus's)")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench"), metavar="DIR",
                   help="cache of synthesised test sets and real-speech manifests (default: .cache/bench)")
    p.add_argument("--accents", default="all", metavar="all|V,V,...", help="espeak-ng voices to test (default: all)")
    p.add_argument("--train-summary", metavar="PATH",
                   help="training corpus summary.json (or its manifest.jsonl), when the model card does not lead to it")
    p.add_argument("--variants", metavar="V,V,...",
                   help="speaker variants for the test sets (default: the first unseen natural ones)")
    p.add_argument("--num-variants", type=int, default=DEFAULT_VARIANTS, metavar="N",
                   help=f"unseen variants per accent when --variants is not given (default: {DEFAULT_VARIANTS})")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--vocab-size", type=int, metavar="N",
                      help="closed test vocabulary: the N most common words (default: the training corpus's)")
    text.add_argument("--test-text", metavar="FILE",
                      help="test sentences from a text file, in order (e.g. `speechadapt data text --split test`: "
                           "the held-out split of a natural-text corpus); training transcripts are skipped")
    text.add_argument("--sentence-words", metavar="FILE|W,W,...",
                      help="draw test sentences uniformly from these words (a word list, a text file, or a "
                           "manifest.jsonl's transcripts), e.g. for a command-vocabulary model")
    p.add_argument("--words", type=lambda s: tuple(int(v) for v in s.split(":")), metavar="LO:HI",
                   help="words per test sentence (default: the training corpus's, else 3:10)")
    p.add_argument("--fsdd-takes", choices=("test", "all"), default="test",
                   help="fsdd: takes 0-4 (the dataset's test split, default) or all")
    p.add_argument("--no-real", action="store_true", help="skip the real-speech rows")
    p.add_argument("--quick", action="store_true", help="10 utterances per accent, no real speech (smoke test)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="synthesis processes (default: 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for decoding (default: 1, one stream per core as served; 0 = torch default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.per_accent is None:
        args.per_accent = 10 if args.quick else 60
    if args.per_accent < 1:
        p.error("--per-accent must be at least 1")
    if args.words and (len(args.words) != 2 or not 1 <= args.words[0] <= args.words[1]):
        p.error("--words is LO:HI with 1 <= LO <= HI")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from speechadapt.asr.inference import load_model
    from speechadapt.training.synth import list_voices

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started, load_start = time.monotonic(), _loadavg()
    try:
        model = load_model(args.model, store=args.model_store, device=args.device)
    except (LookupError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    voices = list_voices()
    if args.accents.strip() != "all":
        wanted = [a.strip() for a in args.accents.split(",") if a.strip()]
        bad = [a for a in wanted if a not in voices]
        if bad or not wanted:
            print(f"error: unknown accent(s) {', '.join(bad) or '(none)'}; English voices: {', '.join(voices)}",
                  file=sys.stderr)
            return 2
        voices = wanted
    model_dir = model.ref.path if model.ref else None
    try:
        info = training_info(model.card, model_dir, args.train_summary)
        variants, variant_basis = test_variants(
            info, [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None,
            args.num_variants)
        text = make_text(args, info, args.per_accent)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    espeak_version = _espeak_version()
    vocab = f"closed, {text.vocab_size} words" if text.vocab_size else "broad"
    header = [
        f"## {model.name}: per-accent error rates",
        "",
        f"- model: {model.name} ({model.card.num_parameters:,} parameters), {model_dir}",
        f"- training corpus: {info.source or 'unknown'}; seen voices: {', '.join(info.voices or ['?'])}; "
        f"seen variants: {', '.join(info.variants or ['?'])}",
        f"- test text: {args.per_accent} unseen sentences per accent, {text.words[0]}-{text.words[1]} words, "
        f"vocabulary {vocab} ({text.source}), seed {text.seed}",
        f"- test speakers: variants {', '.join(variants)} ({variant_basis})",
    ]
    header += [f"- note: {n}" for n in info.notes + text.notes]
    print("\n".join(header), flush=True)

    rows: list[dict] = []
    for voice in voices:
        seen = UNKNOWN if info.voices is None else (SEEN if voice in info.voices else UNSEEN)
        try:
            manifest, cached = synth_set(workdir, voice, variants, text, info, args.jobs, espeak_version)
        except (ValueError, RuntimeError, OSError) as e:
            rows.append({"set": voice, "kind": "note", "seen": seen, "note": f"synthesis failed: {e}"})
            continue
        row = _eval_row(model, voice, "synthetic", seen, manifest, voice=voice, variants=variants, cached=cached)
        rows.append(row)
        print(f"  {voice}: {row.get('utterances', 0)} utts, WER {_pct(row.get('wer'))}"
              f"{' (cached set)' if cached else ''}", file=sys.stderr, flush=True)
    rows += [m for m in (_macro(rows, SEEN, "mean, seen accents"), _macro(rows, UNSEEN, "mean, unseen accents"))
             if m]
    if args.quick or args.no_real:
        rows.append({"set": "real speech", "kind": "note", "seen": "-",
                     "note": "skipped (--quick)" if args.quick else "skipped (--no-real)"})
    else:
        for s in real_sets(workdir, args.fsdd_takes):
            details = s.get("details", {})
            if s["manifest"] is None:
                rows.append({"set": s["set"], "kind": "note", "seen": "real speech", "note": s["note"], **details})
                continue
            row = _eval_row(model, s["set"], "real", "real speech", s["manifest"], s["note"], **details)
            rows.append(row)
            print(f"  {s['set']}: {row.get('utterances', 0)} utts, WER {_pct(row.get('wer'))}", file=sys.stderr,
                  flush=True)

    print()
    print(table(rows))
    machine = machine_info(args.device)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, _loadavg()
    result = {
        "model": model.name,
        "model_path": str(model_dir) if model_dir else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None
        else shlex.join(["python", "bench/base_model.py", *argv]),
        "settings": {"per_accent": args.per_accent, "accents": voices, "variants": variants,
                     "variant_basis": variant_basis, "quick": args.quick, "fsdd_takes": args.fsdd_takes,
                     "workdir": str(workdir), "threads": args.threads},
        "decoder": ({"kind": "beam search over the model's lexicon", "lexicon_words": len(model.lexicon),
                     **model.beam.cfg.to_dict()} if model.lexicon else {"kind": "greedy CTC"}),
        "test_text": text.as_dict(),
        "training": info.as_dict(),
        "rows": rows,
        "machine": machine,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
