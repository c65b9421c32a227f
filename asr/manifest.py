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
