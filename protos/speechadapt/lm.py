"""Word language models for character CTC models: `speechadapt lm build` and `speechadapt lm attach` (`lm tune`,
which needs the acoustic model, is speechadapt.training.lm_tune).

An LM folder holds `lm.arpa` (interpolated modified Kneser-Ney, speechadapt.ngram), `lexicon.txt` (every word
of the LM's vocabulary spelled in the model's characters, `word<TAB>w o r d |`, as flashlight's lexicon
decoder reads it) and `lm.json` (order, n-gram counts, sources, decoding weights and the sha256 of each file).
The vocabulary is the words of the text plus a broad word list (/usr/share/dict/words by default, kept to
lowercase words the tokenizer spells), so decoding is open to tens of thousands of words the model's own
lexicon never had. Light: no torch, the client CLI runs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from speechadapt.ngram import BOS, EOS, UNK, NgramModel, estimate

ARPA, LEXICON, INFO = "lm.arpa", "lexicon.txt", "lm.json"
FORMAT = "speechadapt-lm/1"
PACKAGE_DIR = "lm"  # where an LM lives inside a model package
DICT_WORDS = "/usr/share/dict/words"  # Debian: wamerican
DEFAULT_TOKENS = ("'", *"abcdefghijklmnopqrstuvwxyz")  # the characters of speechadapt's CharTokenizer
# decoding settings written into lm.json, over the card's `decoding` when the LM is attached (speechadapt.asr.beam
# BeamConfig): chosen on base-en with espeak-ng sentences (README "Language models"). A narrower beam than the
# closed lexicon's 50/12/25: with the LM it costs ~1 WER point and a quarter of the time.
DEFAULT_DECODING = {"lm_weight": 1.0, "lm_word_score": 1.0, "beam_size": 32, "beam_size_token": 8,
                    "beam_threshold": 20.0}
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


class LmError(ValueError):
    """A language model folder or build request that is malformed, incomplete or tampered with."""


@dataclass(frozen=True)
class LmBuildConfig:
    texts: tuple[str, ...]
    out: str
    order: int = 3
    vocab_words: tuple[str, ...] = ()  # files of words to keep in the vocabulary even if the text lacks them
    broad_words: str | None = DICT_WORDS  # None: only the text's (and vocab_words') words
    min_count: int = 1  # text words seen fewer times become <unk>
    prune: tuple[int, ...] = ()  # lmplz-style thresholds per order, e.g. (0, 0, 1)
    characters: tuple[str, ...] = DEFAULT_TOKENS  # the model's alphabet (word separator excluded)
    decoding: dict = field(default_factory=lambda: dict(DEFAULT_DECODING))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sentences(path: str | Path) -> list[list[str]]:
    """A text file -> normalised sentences (one per line, lines also split after . ! ? ;) as word lists."""
    from speechadapt.asr.text import normalize_text

    path = Path(path)
    if not path.is_file():
        raise LmError(f"text file {path} does not exist")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            for part in _SENTENCE_END.split(line):
                words = normalize_text(part).split()
                if words:
                    out.append(words)
    return out


def read_word_list(path: str | Path, characters: tuple[str, ...]) -> list[str]:
    """Lowercase words of a word list (one per line) that the alphabet spells; names and abbreviations dropped."""
    path = Path(path)
    if not path.is_file():
        hint = " (Debian: apt-get install wamerican)" if str(path) == DICT_WORDS else ""
        raise LmError(f"word list {path} does not exist{hint}")
    alphabet = set(characters)
    words = []
    for w in path.read_text(encoding="utf-8", errors="replace").split():
        if _WORD.fullmatch(w) and set(w) <= alphabet and (len(w) > 1 or w in ("a", "i")):
            words.append(w)
    return sorted(set(words))


def build(cfg: LmBuildConfig) -> dict:
    """Write lm.arpa, lexicon.txt and lm.json into cfg.out; returns lm.json's content."""
    if cfg.order < 2:
        raise LmError(f"--order must be at least 2 (flashlight's KenLM reads bigram and larger models), got {cfg.order}")
    if cfg.min_count < 1:
        raise LmError(f"--min-count must be at least 1, got {cfg.min_count}")
    if not cfg.texts:
        raise LmError("give at least one --text FILE")
    alphabet = set(cfg.characters)
    sources, sentences = [], []
    for t in cfg.texts:
        sents = read_sentences(t)
        if not sents:
            raise LmError(f"text file {t} has no words after normalisation")
        bad = sorted({c for s in sents for w in s for c in w} - alphabet)
        if bad:
            raise LmError(f"text file {t} has characters the model cannot spell: {''.join(bad)}")
        sentences += sents
        sources.append({"path": str(t), "sha256": sha256_file(t), "sentences": len(sents),
                        "words": sum(len(s) for s in sents)})
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s:
            counts[w] = counts.get(w, 0) + 1
    keep = {w for w, c in counts.items() if c >= cfg.min_count}
    extra: set[str] = set()
    for f in cfg.vocab_words:
        extra |= set(read_word_list(f, cfg.characters))
    broad = None
    if cfg.broad_words:
        words = read_word_list(cfg.broad_words, cfg.characters)
        extra |= set(words)
        broad = {"path": cfg.broad_words, "sha256": sha256_file(cfg.broad_words), "words": len(words)}
    if len(keep) < len(counts):
        sentences = [[w if w in keep else UNK for w in s] for s in sentences]
    try:
        model = estimate(sentences, cfg.order, vocabulary=extra, prune=cfg.prune)
    except ValueError as e:
        raise LmError(str(e)) from e

    return write_lm(model, cfg.out, cfg.characters, cfg.decoding, {
        "text_words": len(keep),
        "sources": sources,
        "broad_words": broad,
        "vocab_words": [{"path": str(f), "sha256": sha256_file(f)} for f in cfg.vocab_words],
        "min_count": cfg.min_count,
        "prune": list(cfg.prune),
        "smoothing": "interpolated modified Kneser-Ney",
        "discounts": {str(n + 1): list(d) for n, d in enumerate(model.discounts)},
        "discount_fallback_orders": list(model.fallback_orders),
    })


def write_lm(model: NgramModel, out: str | Path, characters: tuple[str, ...], decoding: dict, about: dict) -> dict:
    """An LM folder from a model: lm.arpa, lexicon.txt (every unigram but <s>, </s>, <unk>) and lm.json (`about`
    plus order, counts, vocabulary, characters, decoding and each file's sha256). Returns lm.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.write_arpa(out / ARPA)
    vocab = sorted(g[0] for g in model.grams[0] if g[0] not in (BOS, EOS, UNK))
    (out / LEXICON).write_text("".join(f"{w}\t{' '.join(w)} |\n" for w in vocab), encoding="utf-8")
    info = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "order": model.order,
        "counts": {str(n): c for n, c in model.counts.items()},
        "vocabulary": len(vocab),
        **about,
        "characters": "".join(characters),
        "decoding": dict(decoding),
        "files": {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size} for n in (ARPA, LEXICON)},
    }
    _write_json(out / INFO, info)
    return info


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class LmFiles:
    """A verified LM folder: the ARPA path, the lexicon's words, lm.json."""

    folder: Path
    arpa: Path
    words: tuple[str, ...]
    info: dict

    @property
    def decoding(self) -> dict:
        return dict(self.info.get("decoding") or {})


def read_lm(folder: str | Path, characters: tuple[str, ...] | None = None) -> LmFiles:
    """Check an LM folder (lm.json, each file's sha256, the lexicon's spellings) and read its lexicon."""
    folder = Path(folder)
    path = folder / INFO
    if not path.is_file():
        raise LmError(f"{folder} is not a language model folder: no {INFO} (build one with `speechadapt lm build`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LmError(f"{path}: unsupported format {info.get('format') if isinstance(info, dict) else None!r}; "
                      f"expected {FORMAT!r}")
    files = info.get("files") or {}
    for name in (ARPA, LEXICON):
        meta = files.get(name)
        if not meta:
            raise LmError(f"{path} does not list {name}")
        if not (folder / name).is_file():
            raise LmError(f"{folder}: {name} is missing")
        if sha256_file(folder / name) != meta.get("sha256"):
            raise LmError(f"{folder}: {name} does not match its recorded sha256 (tampered or corrupt)")
    alphabet = set(characters if characters is not None else info.get("characters", "".join(DEFAULT_TOKENS)))
    words = []
    for lineno, line in enumerate((folder / LEXICON).read_text(encoding="utf-8").splitlines(), 1):
        word, _, spelling = line.partition("\t")
        if spelling != " ".join(word) + " |" or not word or not set(word) <= alphabet:
            raise LmError(f"{folder / LEXICON}:{lineno}: expected 'word<TAB>w o r d |' in the model's characters, "
                          f"got {line[:60]!r}")
        words.append(word)
    if not words:
        raise LmError(f"{folder / LEXICON} is empty")
    return LmFiles(folder, folder / ARPA, tuple(words), info)


def attach(model: str | Path, lm: str | Path) -> dict:
    """Copy a verified LM into a model package's `lm/` folder and list its files (with sha256) in model.json.
    A package that already has an LM gets the new one. Returns the updated card (as JSON)."""
    from speechadapt.asr.package import CARD, PackageError, read_card, verify

    model = Path(model)
    try:
        card = read_card(model)
        verify(model, card)
    except PackageError as e:
        raise LmError(f"cannot attach to {model}: {e}") from e
    if card.tokenizer.get("type") != "char":
        raise LmError(f"{model}: word LMs decode character CTC models; this package's tokenizer is "
                      f"{card.tokenizer.get('type')!r}")
    characters = tuple(card.tokenizer["tokens"][2:])
    read_lm(lm, characters)
    target = model / PACKAGE_DIR
    staging = model / (PACKAGE_DIR + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in (ARPA, LEXICON, INFO):
        shutil.copyfile(Path(lm) / name, staging / name)
    read_lm(staging, characters)
    data = json.loads((model / CARD).read_text(encoding="utf-8"))
    data["files"] = {k: v for k, v in data["files"].items() if not k.startswith(PACKAGE_DIR + "/")}
    for name in (ARPA, LEXICON, INFO):
        data["files"][f"{PACKAGE_DIR}/{name}"] = {"sha256": sha256_file(staging / name),
                                                  "bytes": (staging / name).stat().st_size}
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    _write_json(model / CARD, data)
    return data


def detach(model: str | Path) -> dict:
    """Take the LM out of a model package, in place: the card stops listing `lm/` files (and lineage.lm) first,
    then the folder goes. Returns the updated card (as JSON)."""
    from speechadapt.asr.package import CARD

    model = Path(model)
    data = json.loads((model / CARD).read_text(encoding="utf-8"))
    data["files"] = {k: v for k, v in data["files"].items() if not k.startswith(PACKAGE_DIR + "/")}
    if isinstance(data.get("lineage"), dict):
        data["lineage"].pop("lm", None)
    _write_json(model / CARD, data)
    shutil.rmtree(model / PACKAGE_DIR, ignore_errors=True)
    return data


# -- CLI (speechadapt lm build / attach)


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """`build` and `attach`; returns the subparsers (the CLI adds `tune`, which runs the acoustic model)."""
    sub = parser.add_subparsers(dest="lm_command", metavar="COMMAND", required=True)
    p = sub.add_parser("build", help="build a word n-gram LM (ARPA, Kneser-Ney) and its lexicon from text",
                       description="Text is normalised like transcripts (numbers spelled out, lowercase a-z and '). "
                       "Writes DIR/lm.arpa, DIR/lexicon.txt, DIR/lm.json.")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE", help="text files, one or more sentences a line")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the LM into")
    p.add_argument("--order", type=int, default=3, metavar="N", help="n-gram order, at least 2 (default: 3)")
    p.add_argument("--vocab-words", nargs="+", default=[], metavar="FILE",
                   help="word lists (one a line) to keep in the vocabulary even where the text lacks them")
    p.add_argument("--broad-words", default=DICT_WORDS, metavar="FILE",
                   help=f"broad word list for open-vocabulary decoding (default: {DICT_WORDS}; 'none': only the "
                        "text's words)")
    p.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="text words seen fewer than N times become <unk> (default: 1)")
    p.add_argument("--prune", type=int, nargs="+", default=[], metavar="T",
                   help="drop n-grams of order i with count <= T_i, e.g. 0 0 1 (first 0; the last repeats)")
    p.add_argument("--lm-weight", type=float, default=DEFAULT_DECODING["lm_weight"], metavar="W",
                   help=f"LM weight recorded for decoding (default: {DEFAULT_DECODING['lm_weight']})")
    p.add_argument("--word-score", type=float, default=DEFAULT_DECODING["lm_word_score"], metavar="S",
                   help=f"per-word bonus recorded for decoding (default: {DEFAULT_DECODING['lm_word_score']})")
    p.add_argument("--attach", default=None, metavar="MODEL_DIR", help="then attach the LM to this model package")
    p.add_argument("--json", action="store_true", help="print lm.json")
    p.set_defaults(_handler=_run_build)
    p = sub.add_parser("attach", help="put a built LM into a model package (lm/ files, listed in model.json)")
    p.add_argument("--model", required=True, metavar="DIR", help="model package folder")
    p.add_argument("--lm", required=True, metavar="DIR", help="LM folder from `speechadapt lm build`")
    p.add_argument("--out", default=None, metavar="NEW_DIR",
                   help="attach to a copy of the package written here (e.g. STORE/NAME/1; must not exist) and leave "
                        "--model as it is")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="with --out: the copy's model name (its card's `name`), e.g. base-en-lm for STORE/base-en-lm/1")
    p.set_defaults(_handler=_run_attach)
    return sub


def _run_build(args: argparse.Namespace) -> int:
    import sys

    broad = None if args.broad_words.lower() == "none" else args.broad_words
    cfg = LmBuildConfig(texts=tuple(args.text), out=args.out, order=args.order, vocab_words=tuple(args.vocab_words),
                        broad_words=broad, min_count=args.min_count, prune=tuple(args.prune),
                        decoding={**DEFAULT_DECODING, "lm_weight": args.lm_weight, "lm_word_score": args.word_score})
    try:
        info = build(cfg)
        if args.attach:
            attach(args.attach, args.out)
    except (LmError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        counts = ", ".join(f"{n}-grams {c}" for n, c in info["counts"].items())
        print(f"wrote {args.out}: {counts}; vocabulary {info['vocabulary']} words "
              f"({info['text_words']} from the text)" + (f"; attached to {args.attach}" if args.attach else ""))
    return 0


def _run_attach(args: argparse.Namespace) -> int:
    import sys

    target = args.model
    try:
        if args.name and not args.out:
            raise LmError("--name renames the copy written by --out; give --out NEW_DIR too")
        if args.out:
            if Path(args.out).exists():
                raise LmError(f"--out {args.out} already exists; name a new folder")
            read_lm(args.lm)
            shutil.copytree(args.model, args.out)
            target = args.out
        attach(target, args.lm)
        if args.name:
            card = json.loads((Path(target) / "model.json").read_text(encoding="utf-8"))
            _write_json(Path(target) / "model.json", {**card, "name": args.name})
    except (LmError, OSError) as e:
        if args.out and target == args.out:
            shutil.rmtree(args.out, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"attached {args.lm} to {target} ({PACKAGE_DIR}/{ARPA}, {PACKAGE_DIR}/{LEXICON}, {PACKAGE_DIR}/{INFO})")
    return 0
