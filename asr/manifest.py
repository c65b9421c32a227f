"""Data manifests: JSON lines {"audio", "text", "speaker"?, "duration"?}, audio relative to the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str
    speaker: str = ""
    duration: float | None = None


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    items: list[Utterance] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(d, dict) or not isinstance(d.get("audio"), str) or not isinstance(d.get("text"), str):
            raise ValueError(f"{path}:{n}: each line needs string fields \"audio\" and \"text\"")
        audio = Path(d["audio"])
        items.append(Utterance(audio if audio.is_absolute() else path.parent / audio, d["text"], str(d.get("speaker", "")), d.get("duration")))
    if not items:
        raise ValueError(f"manifest {path} has no utterances")
    return items


# ---------------------------------------------------------------------------------------------------------
# Data checks (before a job is submitted). No torch here: the server imports this module.

# What adaptation needs at least, per manifest role: (utterances, seconds of audio).
MINIMUM = {"train": (10, 3.0), "dev": (5, 0.0), "source_dev": (5, 0.0)}  # (utterances, seconds): one speaker's 10 words can adapt
MAX_LISTED = 20  # problems listed per manifest; the rest are counted


@dataclass
class ManifestCheck:
    """What `check_manifest` found: usable utterances and their audio, and every problem (each says what to fix)."""

    utterances: int
    seconds: float
    problems: list[str]
    audio: frozenset = frozenset()  # resolved paths of the audio files the manifest names (that exist)

    @property
    def ok(self) -> bool:
        return not self.problems


def _unwritable(raw: str, normalized: str, alphabet: set[str]) -> list[str]:
    """Characters the model cannot write: letters that normalisation drops (Cyrillic, CJK, ...) and characters of
    the normalised text outside the tokenizer's alphabet. Digits, punctuation and symbols are normalised or dropped."""
    import unicodedata

    from speechadapt.asr.text import normalize_text

    bad = {c for c in normalized if c not in alphabet}
    for c in set(raw):
        if unicodedata.category(c).startswith("L") and not normalize_text(c):
            bad.add(c)
    return sorted(bad)


def check_manifest(path: str | Path, tokenizer, *, label: str = "manifest", min_utterances: int = 1,
                   min_seconds: float = 0.0, frame_seconds: float = 0.04) -> ManifestCheck:
    """Check a JSON-lines manifest for training: readable, valid lines, audio that exists and decodes
    (`soundfile.info`), transcripts that are non-empty after `normalize_text` and writable with `tokenizer`'s
    alphabet, audio long enough for its transcript (CTC emits one token per `frame_seconds`), and at least
    `min_utterances` usable utterances holding `min_seconds` of audio. Problems name the manifest (`label`) and
    line; at most MAX_LISTED per manifest are listed, then "... and N more"."""
    import soundfile as sf

    from speechadapt.asr.text import normalize_text

    path = Path(path)
    where = f"{label} {path}"
    if str(path).startswith("data://"):
        return ManifestCheck(0, 0.0, [f"{label}: {path} is a data:// URI; resolve it to a local path before checking"])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return ManifestCheck(0, 0.0, [f"{where}: no such file; give the path of a JSON-lines manifest"])
    except IsADirectoryError:
        return ManifestCheck(0, 0.0, [f"{where}: is a folder; give the manifest file inside it (e.g. manifest.jsonl)"])
    except UnicodeDecodeError:
        return ManifestCheck(0, 0.0, [f"{where}: not UTF-8 text; save the manifest as UTF-8 JSON lines"])
    except OSError as e:
        return ManifestCheck(0, 0.0, [f"{where}: cannot read it ({e.strerror or e}); check its permissions"])

    alphabet = {t for t in getattr(tokenizer, "tokens", ()) if len(t) == 1}
    problems: list[str] = []
    usable, seconds, audio_set = 0, 0.0, set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        at = f"{where} line {n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{at}: not valid JSON ({e.msg}); each line must be one JSON object")
            continue
        if not isinstance(d, dict):
            problems.append(f"{at}: not a JSON object; write {{\"audio\": \"path.wav\", \"text\": \"...\"}}")
            continue
        audio, text = d.get("audio"), d.get("text")
        line_problems = []
        if not isinstance(audio, str) or not audio:
            line_problems.append(f"{at}: needs a string field \"audio\" (a path relative to the manifest's folder)")
        if not isinstance(text, str):
            line_problems.append(f"{at}: needs a string field \"text\" (the transcript)")
        duration = 0.0
        if isinstance(audio, str) and audio:
            a = Path(audio) if Path(audio).is_absolute() else path.parent / audio
            if not a.is_file():
                line_problems.append(f"{at}: audio file {a} not found; fix the path (relative to {path.parent}) or add the file")
            else:
                try:
                    info = sf.info(str(a))
                    duration = info.frames / info.samplerate if info.samplerate else 0.0
                    if duration <= 0:
                        line_problems.append(f"{at}: audio file {a} holds no samples; replace it or drop the line")
                except Exception as e:  # soundfile raises its own error types for undecodable files
                    line_problems.append(f"{at}: audio file {a} cannot be decoded ({str(e).strip() or type(e).__name__}); "
                                         "use WAV, FLAC or OGG")
                audio_set.add(str(a.resolve()))
        if isinstance(text, str):
            normalized = normalize_text(text)
            bad = _unwritable(text, normalized, alphabet) if alphabet else []
            if bad:
                line_problems.append(f"{at}: characters outside the model's alphabet: {' '.join(repr(c) for c in bad)}; "
                                     "transcribe them with the letters a-z (or drop the line)")
            elif not normalized:
                line_problems.append(f"{at}: empty transcript{'' if not text.strip() else f' after normalisation ({text!r})'}; "
                                     "write what is said, or drop the line")
            elif duration > 0 and len(normalized) * frame_seconds > duration + 1e-6:
                line_problems.append(f"{at}: transcript of {len(normalized)} characters is too long for {duration:.2f} s of "
                                     f"audio (the model emits at most one character per {frame_seconds * 1000:.0f} ms); "
                                     "check that audio and text belong together")
        if line_problems:
            problems += line_problems
        else:
            usable += 1
            seconds += duration

    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"{where}: ... and {len(problems) - MAX_LISTED} more problems"]
    if usable < min_utterances or seconds < min_seconds:
        need = f"at least {min_utterances} utterances" + (f" and {min_seconds:.0f} s of audio" if min_seconds else "")
        problems.append(f"{where}: too little data: {usable} usable utterances ({seconds:.1f} s of audio); "
                        f"adaptation needs {need} here: add more")
    return ManifestCheck(usable, round(seconds, 3), problems, frozenset(audio_set))


def check_job_data(spec, tokenizer) -> list[str]:
    """Every problem with a job's data (`JobSpec` with local manifest paths; `source_dev_manifest` may be ""):
    train (MINIMUM["train"]), dev and, when given, source dev manifests; the same audio in train and dev.
    An empty list means the job can be submitted."""
    problems: list[str] = []
    checks: dict[str, ManifestCheck] = {}
    for key, role in (("train_manifest", "train"), ("dev_manifest", "dev"), ("source_dev_manifest", "source_dev")):
        value = getattr(spec, key, "") or ""
        if not value:
            if role != "source_dev":
                problems.append(f"{key} is required: give the path of a JSON-lines manifest")
            continue
        count, secs = MINIMUM[role]
        checks[role] = check_manifest(value, tokenizer, label=key, min_utterances=count, min_seconds=secs)
        problems += checks[role].problems
    train, dev = checks.get("train"), checks.get("dev")
    if train and dev and train.audio and dev.audio:
        shared = train.audio & dev.audio
        if shared:
            problems.append(f"dev_manifest shares {len(shared)} of its {len(dev.audio)} audio files with train_manifest "
                            f"(e.g. {sorted(shared)[0]}); hold out different utterances for dev")
    return problems
