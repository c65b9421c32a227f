"""The on-disk model package: a folder with `model.json` (the card) and `weights.safetensors`.

Loading never unpickles: the card is JSON, the weights safetensors, and every file's
sha256 must match the one the card records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from speechadapt.asr.text import CharTokenizer

if TYPE_CHECKING:  # torch and speechbrain load only when weights do: cards, stores and publishing stay light
    from speechadapt.asr.features import FeatureConfig
    from speechadapt.asr.model import ConformerCTC

ARCHITECTURE = "conformer-ctc"

FORMAT_VERSION = 1
CARD = "model.json"
WEIGHTS = "weights.safetensors"
LEXICON = "lexicon.txt"  # optional: the words the model knows, one per line (beam search over them)
LM_DIR = "lm"  # optional: a word language model (speechadapt.lm: lm.arpa, lexicon.txt, lm.json)


class PackageError(ValueError):
    """A model package that is missing, malformed or tampered with."""


@dataclass
class ModelCard:
    name: str
    architecture: str
    hparams: dict
    tokenizer: dict
    features: dict
    sample_rate: int = 16000
    language: str = "en"
    version: int = 1
    description: str = ""
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    created: str = ""
    num_parameters: int = 0
    files: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=dict)  # beam search options (speechadapt.asr.beam.BeamConfig)
    # an adapter package: its weights are changes to this base ({"model": "name@N", "weights_sha256",
    # "lora_scaling"}); empty for a complete package (speechadapt.asr.whisper.package_state)
    base: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def files_bytes(self) -> int:
        """The size of the package's own files, as recorded."""
        return sum(int(f.get("bytes", 0)) for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        if d.get("format_version") != FORMAT_VERSION:
            raise PackageError(f"unsupported model package format_version {d.get('format_version')!r}; expected {FORMAT_VERSION}")
        missing = [k for k in ("name", "architecture", "hparams", "tokenizer", "features", "files") if k not in d]
        if missing:
            raise PackageError(f"model.json lacks {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SHIPPED_LIMIT_BYTES = 20 * 1024 * 1024  # a package shipped as package data: what the wheel carries


def shipped_bytes(folder: str | Path) -> int:
    """What a package adds to a wheel: every file deflated (zip's level 6). Weights barely shrink; an ARPA LM
    and a lexicon shrink about 5x."""
    import zlib

    return sum(len(zlib.compress(p.read_bytes(), 6)) for p in sorted(Path(folder).rglob("*")) if p.is_file())


def read_card(folder: str | Path) -> ModelCard:
    folder = Path(folder)
    path = folder / CARD
    if not path.is_file():
        raise PackageError(f"{folder} is not a model package: no {CARD}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise PackageError(f"{path} must hold a JSON object")
    return ModelCard.from_dict(data)


def _package_path(name: str) -> bool:
    """A file name a card may list: in the package folder, or in its `lm/` folder (an attached language model)."""
    parts = Path(name).parts
    return Path(name).as_posix() == name and (len(parts) == 1 or (len(parts) == 2 and parts[0] == LM_DIR)) \
        and all(p not in ("", ".", "..") for p in parts)


def verify(folder: Path, card: ModelCard) -> None:
    """Every file the card lists exists and has its recorded sha256; the weights are listed."""
    if WEIGHTS not in card.files:
        raise PackageError(f"{folder / CARD} does not list {WEIGHTS}")
    for name, meta in card.files.items():
        if not _package_path(name):
            raise PackageError(f"{folder / CARD} lists a file outside the package: {name!r}")
        path = folder / name
        if not path.is_file():
            raise PackageError(f"{folder}: file {name} is missing")
        digest = sha256_file(path)
        if digest != meta.get("sha256"):
            raise PackageError(f"{folder}: {name} does not match its recorded sha256 (tampered or corrupt)")


def load_package(folder: str | Path, device: str = "cpu") -> tuple[ModelCard, ConformerCTC, CharTokenizer, FeatureConfig]:
    from safetensors.torch import load_file

    from speechadapt.asr.features import FeatureConfig
    from speechadapt.asr.model import ConformerCTC, ModelConfig

    folder = Path(folder)
    card = read_card(folder)
    if card.architecture != ARCHITECTURE:
        raise PackageError(f"unsupported architecture {card.architecture!r}; this build knows {ARCHITECTURE!r}")
    verify(folder, card)
    cfg = ModelConfig.from_dict(card.hparams)
    net = ConformerCTC(cfg)
    try:
        state = load_file(str(folder / WEIGHTS), device=device)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise PackageError(f"{folder / WEIGHTS} is not a valid safetensors file: {e}") from e
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PackageError(f"{folder}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return card, net.to(device).eval(), CharTokenizer.from_dict(card.tokenizer), FeatureConfig.from_dict(card.features)


def data_tokenizer(card: ModelCard) -> CharTokenizer | None:
    """The tokenizer whose alphabet job data must be written in: a character model's; None for models that
    write any text (Whisper's byte-level BPE)."""
    return CharTokenizer.from_dict(card.tokenizer) if card.tokenizer.get("type") == "char" else None


def read_lexicon(folder: str | Path, card: ModelCard) -> list[str] | None:
    """The package's lexicon (verified with the rest by `load_package`), or None when it has none."""
    if LEXICON not in card.files:
        return None
    words = Path(folder, LEXICON).read_text(encoding="utf-8").split()
    if not words:
        raise PackageError(f"{Path(folder) / LEXICON} is empty")
    tokenizer = CharTokenizer.from_dict(card.tokenizer)
    bad = sorted({w for w in words if not set(w) <= set(tokenizer.tokens[2:])})
    if bad:
        raise PackageError(f"{Path(folder) / LEXICON} has words outside the model's alphabet: {bad[:5]}")
    return words


def read_package_lm(folder: str | Path, card: ModelCard):
    """The package's word LM (`lm/`, verified with the rest by `load_package`) as `speechadapt.lm.LmFiles`, or
    None when it has none. An LM whose lm.json or files disagree with the card is refused."""
    from speechadapt.lm import INFO, LmError, read_lm

    if f"{LM_DIR}/{INFO}" not in card.files:
        return None
    try:
        return read_lm(Path(folder) / LM_DIR, tuple(CharTokenizer.from_dict(card.tokenizer).tokens[2:]))
    except LmError as e:
        raise PackageError(f"{folder}: its language model is unusable: {e}") from e


def lexicon_from_texts(texts) -> list[str]:
    """The sorted set of words in transcripts (already normalised)."""
    return sorted({w for t in texts for w in t.split()})


def save_package(
    folder: str | Path,
    net: ConformerCTC,
    tokenizer: CharTokenizer,
    features: FeatureConfig,
    *,
    name: str,
    version: int = 1,
    description: str = "",
    metrics: dict | None = None,
    lineage: dict | None = None,
    language: str = "en",
    lexicon: list[str] | None = None,
    decoding: dict | None = None,
) -> ModelCard:
    """Write a package into `folder` (created; must not hold another package). Files are fsynced."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    names = [WEIGHTS]
    if lexicon:
        (folder / LEXICON).write_text("\n".join(sorted(set(lexicon))) + "\n", encoding="utf-8")
        names.append(LEXICON)
    return write_card(
        folder, names,
        name=name,
        version=version,
        architecture=ARCHITECTURE,
        hparams=net.cfg.to_dict(),
        tokenizer=tokenizer.to_dict(),
        features=features.to_dict(),
        sample_rate=features.sample_rate,
        language=language,
        description=description,
        metrics=dict(metrics or {}),
        lineage=dict(lineage or {}),
        num_parameters=net.num_parameters(),
        decoding=dict(decoding or {}),
    )


def write_card(folder: Path, names: list[str], **fields_) -> ModelCard:
    """Finish a package whose files `names` are written in `folder`: record each file's sha256 and size in
    `model.json`, then fsync every file. Returns the card."""
    folder = Path(folder)
    card = ModelCard(
        **fields_,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        files={n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in names},
    )
    (folder / CARD).write_text(card.to_json())
    for name_ in (*names, CARD):
        with open(folder / name_, "rb") as f:
            os.fsync(f.fileno())
    return card
