"""The model store: `ROOT/<name>/<version>/` packages, plus the models shipped with the package."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from speechadapt.asr.package import CARD, read_card

BUILTIN_DIR = Path(__file__).resolve().parent / "models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelNotFound(LookupError):
    """No model matches a reference."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    path: Path
    source: str  # "store", "builtin" or "path"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """"name" or "name@version" -> (name, version or None). Raises ValueError saying what to fix."""
    name, sep, ver = ref.strip().partition("@")
    if not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no path separators or '..')"
        )
    if not sep:
        return name, None
    if not ver.isdigit() or int(ver) < 1:
        raise ValueError(f"invalid model version {ver!r} in {ref!r}: use name@N with N a positive integer")
    return name, int(ver)


class ModelStore:
    """Read access to a store folder and the built-in models (the store wins on a name clash)."""

    def __init__(self, root: str | Path | None, builtin: Path | None = BUILTIN_DIR):
        self.root = Path(root) if root else None
        self.builtin = builtin

    def versions(self, name: str) -> list[ModelRef]:
        """All versions of `name`, oldest first."""
        refs: list[ModelRef] = []
        if self.root is not None and (self.root / name).is_dir():
            for d in (self.root / name).iterdir():
                if d.name.isdigit() and (d / CARD).is_file():
                    refs.append(ModelRef(name, int(d.name), d, "store"))
        if not refs and self.builtin is not None and (self.builtin / name / CARD).is_file():
            card = read_card(self.builtin / name)
            refs.append(ModelRef(name, card.version, self.builtin / name, "builtin"))
        return sorted(refs, key=lambda r: r.version)

    def names(self) -> list[str]:
        names: set[str] = set()
        for base in (self.root, self.builtin):
            if base is not None and base.is_dir():
                names.update(d.name for d in base.iterdir() if d.is_dir() and _NAME.match(d.name))
        return sorted(n for n in names if self.versions(n))

    def resolve(self, ref: str) -> ModelRef:
        name, version = parse_ref(ref)
        refs = self.versions(name)
        if not refs:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found (available: {known})")
        if version is None:
            return refs[-1]
        for r in refs:
            if r.version == version:
                return r
        raise ModelNotFound(
            f"model {name!r} has no version {version} (available: {', '.join(str(r.version) for r in refs)})"
        )


def resolve_path_or_ref(ref: str, store: str | Path | None = None) -> ModelRef:
    """A package folder path, or a name[@version] in `store` or among the built-in models."""
    p = Path(ref)
    if (p / CARD).is_file():
        card = read_card(p)
        return ModelRef(card.name, card.version, p, "path")
    if "/" in ref or "\\" in ref:
        raise ModelNotFound(f"no model package at {ref} (a folder with {CARD})")
    return ModelStore(store).resolve(ref)
